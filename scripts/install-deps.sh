#!/bin/bash
# Installs what cripy needs on a fresh Debian machine: the Debian packages (runc, conmon, CNI plugins, gVisor's
# runsc for sandboxed pods, the registry used by tests and the demo) and a venv with the pinned Python packages.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(runc runsc conmon containernetworking-plugins catatonit iproute2 iptables util-linux
          docker-registry busybox-static zstd skopeo apache2-utils gpg gpgv gpg-agent
          systemd  # systemd-analyze checks the shipped unit (contrib/systemd) in the tests
          containerd)  # containerd: the peer of the benchmarks, whose --quick smoke run is part of the tests
PYTHON=${PYTHON:-python3}

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Both files: requirements-dev.txt includes requirements.txt, and a change to either must reach the venv.
if [ ! -x .venv/bin/python ] || ! cat requirements.txt requirements-dev.txt | cmp -s - .venv/.installed-requirements; then
    echo "setting up the Python venv (.venv)"
    "$PYTHON" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
    cat requirements.txt requirements-dev.txt > .venv/.installed-requirements
fi

# cripy's own byte code, as pip compiles a package it installs (an editable install is not compiled): with
# PYTHONDONTWRITEBYTECODE set, as on CI machines, every daemon start and `cripy ctl` run would otherwise compile
# all of cripy again (a daemon's start: 0.74 -> 0.52 s). Python still checks each file against its source.
.venv/bin/python -m compileall -q -j 0 cripy tests bench >/dev/null
