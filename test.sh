#!/usr/bin/env bash
# chit's whole test suite on a fresh machine: the system packages the tests
# start for real, a virtualenv with chit and its test extra, then pytest.
# Extra arguments go to pytest (e.g. ./test.sh -k kubernetes -x).
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages of the real components the tests start as subprocesses.
packages=()
missing() { ! command -v "$1" >/dev/null 2>&1; }
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || packages+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing docker-registry && packages+=(docker-registry)   # the OCI registry the image-signature tests push to
missing kubectl && packages+=(kubernetes-client)   # renders deploy/ with kubectl kustomize
missing redis-server && packages+=(redis-server)   # the shared state store of the multi-replica tests
missing redis-sentinel && packages+=(redis-sentinel)   # the sentinels of the high-availability state tests
missing promtool && packages+=(prometheus)   # promtool: checks and unit-tests the alert rules of deploy/monitoring

if ((${#packages[@]})); then
  echo "test.sh: installing ${packages[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    echo "test.sh: please install: ${packages[*]}" >&2; exit 1
  fi
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "test.sh: creating .venv" >&2
  python3 -m venv .venv
fi
# The pip of python3 -m venv may be old: pip 23 gives up resolving OpenTelemetry's
# lockstep beta packages (chit[tracing]) that pip 25 resolves.
.venv/bin/python -m pip install --quiet --disable-pip-version-check 'pip>=25,<27'
echo "test.sh: installing chit[test] into .venv" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
