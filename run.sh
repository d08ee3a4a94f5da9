#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./run.sh demo [ARGS]   install what is needed, then run `bluegreen demo`
#   ./run.sh test [ARGS]   install what is needed, then run the whole test suite
# Works on a fresh Debian 12 machine as root (or with sudo).
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES="python3 python3-venv python3-pip nginx-light haproxy openssh-server openssh-client wrk iproute2 procps util-linux tar coreutils elixir erlang-inets systemd dbus sudo"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_system() {
    local missing=""
    for pkg in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo ">> installing Debian packages:$missing"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    # The test suite runs its own sshd, nginx and HAProxy; the system services are not needed.
}

install_venv() {
    local stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -x .venv/bin/python ]; then
        echo ">> creating .venv"
        /usr/bin/python3 -m venv .venv
    fi
    if [ ! -f "$stamp" ]; then
        echo ">> installing Python dependencies into .venv"
        # (pip's warnings about this machine's extra index paths are noise: filtered)
        .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
        .venv/bin/python -m pip install -q -e '.[test,bench]' 2> >(grep -v "is ignored" >&2)
        rm -f .venv/.installed-*
        touch "$stamp"
    fi
}

cmd="${1:-}"
case "$cmd" in
    demo)
        shift; install_system; install_venv
        exec .venv/bin/bluegreen demo "$@" ;;
    test)
        shift; install_system; install_venv
        exec .venv/bin/python -m pytest "$@" ;;
    *)
        echo "usage: ./run.sh demo [--keep] | ./run.sh test [PYTEST ARGS]" >&2
        exit 2 ;;
esac
