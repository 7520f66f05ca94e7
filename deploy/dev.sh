#!/usr/bin/env bash
# One entry for a newcomer and for CI: set everything up, then run the demo or the tests.
#   bash deploy/dev.sh demo    the real local stack, a generated stream, the worker, the state
#   bash deploy/dev.sh test    lint, types, and every test on the real Kafka, Redis and Qdrant
#   bash deploy/dev.sh setup   only set up
# It installs what it needs: Java and Maven (for the Kafka broker), redis-server, promtool (the
# alert rule tests, from Debian's prometheus package), openssl (the secure stack's test CA), a
# virtual environment with sagestream and its pinned dependencies (torch once per environment).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SAGESTREAM_VENV:-.venv}
PY=${PYTHON:-python3}

need_apt() {
  local missing=()
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v promtool >/dev/null || missing+=(prometheus)  # promtool: the alert rule tests
  command -v openssl >/dev/null || missing+=(openssl)  # the secure stack's throwaway CA
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then echo "run as root or install: ${missing[*]}" >&2; exit 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian's packages may start a redis on 6379 and a prometheus on 9090; the stack and
    # the tests run their own, so stop those.
    service redis-server stop >/dev/null 2>&1 || true
    service prometheus stop >/dev/null 2>&1 || true
  fi
}

setup() {
  need_apt
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
  fi
  # Editable install; pip leaves already-satisfied pins (torch included) alone.
  "$VENV/bin/pip" install -q -e ".[dev,train]"
}

case "${1:-}" in
  setup)
    setup
    ;;
  demo)
    setup
    shift
    # This workplace keeps a Qdrant server binary beside the checkout; point the stack at it
    # unless the user named one (elsewhere: qdrant on PATH, or the demo's embedded fallback).
    for shared_qdrant in "$(pwd)/../shared/bin/qdrant" /work/shared/bin/qdrant; do
      if [ -z "${SAGESTREAM_STACK__QDRANT_BINARY:-}" ] && [ -x "$shared_qdrant" ]; then
        export SAGESTREAM_STACK__QDRANT_BINARY="$shared_qdrant"
      fi
    done
    exec "$VENV/bin/sagestream" demo "$@"
    ;;
  test)
    setup
    shift
    "$VENV/bin/ruff" check streams state encoders deploy tests
    "$VENV/bin/mypy"
    exec "$VENV/bin/pytest" "$@"
    ;;
  *)
    echo "usage: bash deploy/dev.sh setup|demo|test [args]" >&2
    exit 2
    ;;
esac
