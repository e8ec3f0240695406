#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine for felix-py (as root): the kernel tools, BIRD 2 and a
# virtual environment in .venv holding felix-py with its test extras.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

packages=(iptables ipset bird2 iproute2 iputils-ping netcat-openbsd procps kmod python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# BIRD is started by the lab and the tests inside namespaces, never as the host's daemon.
if systemctl is-enabled bird >/dev/null 2>&1; then
    systemctl disable --now bird >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating the virtual environment .venv"
    python3 -m venv .venv
fi
echo "==> installing felix-py into .venv"
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test,bench]'
# An editable install leaves felix-py's own modules uncompiled; every agent, CLI and ExaBGP
# start would compile them again (and never keep the result with PYTHONDONTWRITEBYTECODE).
.venv/bin/python -c 'from bench.report import compile_project; compile_project()'
echo "==> ready: $(.venv/bin/felix-py --version)"
