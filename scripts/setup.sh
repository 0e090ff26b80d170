#!/usr/bin/env bash
# Install everything secvma needs on a fresh Debian machine, build the guest code, fetch fixtures.
# Idempotent: a second run only checks. Run as root (apt-get) or with the packages already present.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(qemu-system-arm device-tree-compiler gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu
          libc6-dev-arm64-cross make cpio xz-utils zstd
          # the application benchmarks' real tools (secvma harness / bench apps); servers for tests
          rt-tests apache2 apache2-utils memcached libmemcached-tools iperf3 sockperf gcc bc
          # the harness's ssh path (its test starts an sshd of its own on loopback)
          openssh-server openssh-client)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # apache2 and memcached must not start as system services (the benchmarks start their own,
  # on loopback): deny service starts during the install unless a policy is already in place.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; fi
fi

PY=${PYTHON:-python3}
# (Re)install when anything is missing, when the installed secvma is another checkout's, or when
# pyproject.toml changed since the install.
here=$(pwd)/src/secvma
installed=$("$PY" -c 'import secvma, os; print(os.path.dirname(os.path.realpath(secvma.__file__)))' 2>/dev/null || true)
stamp=$("$PY" -c 'import sys; print(sys.prefix)')/.secvma-installed
if [ "$installed" != "$(realpath "$here")" ] \
   || ! "$PY" -c 'import pytest, hypothesis, mypy, ruff, elftools, asn1crypto, zstandard, rich' 2>/dev/null \
   || ! cmp -s pyproject.toml "$stamp"; then
  echo "setup: installing the secvma package and its pinned dependencies"
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
  cp pyproject.toml "$stamp" 2>/dev/null || true
fi

if [ "${SECVMA_NO_FIXTURES:-0}" != 1 ]; then
  echo "setup: fetching Debian fixtures (cached)"
  if ! "$PY" -m secvma.cli fixtures fetch; then
    if [ "${SECVMA_REQUIRE_FIXTURES:-0}" = 1 ]; then
      echo "setup: ERROR: the Debian fixtures could not be fetched and SECVMA_REQUIRE_FIXTURES=1" \
           "(CI and scripts/test.sh need them; set SECVMA_REQUIRE_FIXTURES=0 to let those tests skip)" >&2
      exit 1
    fi
    echo "setup: Debian fixtures unavailable; tests that need them will skip"
  fi
fi

echo "setup: building guest code"
"$PY" -m secvma.cli build >/dev/null
