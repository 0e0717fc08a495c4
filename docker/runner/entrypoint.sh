#!/bin/sh
# Runs inside the job container, which has no network interface but loopback. When the
# provider's egress proxy socket is mounted, bridge 127.0.0.1:3128 to it and send HTTPS
# through it; the proxy allows only the configured host:port pairs.
set -eu
SOCKET=/run/cmm-egress/egress.sock
if [ -S "$SOCKET" ]; then
    socat TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr "UNIX-CONNECT:$SOCKET" &
    # Wait (at most 2 s) until the bridge listens: 127.0.0.1:3128 in LISTEN state (0A).
    i=0
    while [ $i -lt 100 ] && ! grep -q ':0C38 00000000:0000 0A' /proc/net/tcp 2>/dev/null; do
        i=$((i + 1))
        sleep 0.02
    done
    export HTTPS_PROXY=http://127.0.0.1:3128 https_proxy=http://127.0.0.1:3128
    export HTTP_PROXY=http://127.0.0.1:3128 http_proxy=http://127.0.0.1:3128
fi
exec "$@"
