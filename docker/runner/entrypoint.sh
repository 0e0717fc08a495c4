#!/bin/sh
# Runs inside the job container, which has no network interface but loopback. When the
# provider's egress proxy socket is mounted, bridge 127.0.0.1:3128 to it and send HTTPS
# through it; the proxy allows only the configured host:port pairs.
set -eu
SOCKET=/run/cmm-egress/egress.sock
if [ -S "$SOCKET" ]; then
    socat TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr "UNIX-CONNECT:$SOCKET" &
    sleep 0.1
    export HTTPS_PROXY=http://127.0.0.1:3128 https_proxy=http://127.0.0.1:3128
    export HTTP_PROXY=http://127.0.0.1:3128 http_proxy=http://127.0.0.1:3128
fi
exec "$@"
