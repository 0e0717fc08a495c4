#!/usr/bin/env bash
# Installs and starts what the tests need (Docker engine, busybox-static, socat, openssl, a throwaway
# PostgreSQL cluster, Python's cryptography for the HPKE interop test, Chromium with its driver and
# Python selenium for the dashboard test, schemathesis for the read views, the real Claude Code CLI from
# the pinned claude-agent-sdk wheel), then runs `swift test`, the quick fault suite and the
# benchmark harness once (`scripts/bench.sh --quick --debug`: every figure produced, values aside).
# In CI (CI=true) a service that cannot be started fails the run; the tests that need it fail
# rather than skip.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
trap stop_started_services EXIT

ensure_docker
ensure_postgres
export CMM_REQUIRE_POSTGRES=1
# openssl makes the throwaway certificate authority of the API gateway's test upstream.
apt_install openssl
if ! python3 -c "from cryptography.hazmat.primitives import hpke" 2>/dev/null; then
    log "installing Python cryptography (HPKE interop test)"
    python3 -m pip install -q "cryptography>=46"
fi
if ! python3 -c "import websockets, yaml, openapi_spec_validator, openapi_schema_validator" 2>/dev/null; then
    log "installing Python websockets, PyYAML and the OpenAPI validators (protocol and read-view tests)"
    python3 -m pip install -q websockets pyyaml openapi-spec-validator openapi-schema-validator
fi
# The dashboard is checked in a real browser: headless Chromium driven by selenium.
apt_install chromium chromium-driver
if ! python3 -c "import selenium" 2>/dev/null; then
    log "installing Python selenium (dashboard browser test)"
    python3 -m pip install -q selenium
fi
# The read views are checked against docs/openapi.yaml by schemathesis.
if ! python3 -c "import schemathesis" 2>/dev/null; then
    log "installing Python schemathesis (read views against their OpenAPI contract)"
    python3 -m pip install -q schemathesis
fi
# The claude backend is tested with the real Claude Code CLI from the pinned wheel.
ensure_claude_cli
export CMM_REQUIRE_DOCKER=1 CMM_REQUIRE_BROWSER=1 CMM_REQUIRE_SCHEMATHESIS=1 CMM_REQUIRE_CLAUDE=1

log "swift build --build-tests"
swift build --build-tests
log "swift test"
swift test --skip-build "$@"
log "the quick fault suite"
scripts/faults.sh --quick
log "the benchmark harness, quick and on the debug build: every figure is produced (values in docs/BENCHMARKS.md)"
scripts/bench.sh --quick --debug
