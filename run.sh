#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./run.sh demo [ARGS]   install what is needed, then run `bluegreen demo`
#   ./run.sh test [ARGS]   install what is needed, then run the whole test suite
# Works on a fresh Debian 12 machine as root (or with sudo).
# Python packages come from requirements.lock (exact versions, hashes checked):
#   ./run.sh lock          rewrite requirements.lock with the newest versions pyproject.toml allows
#   ./run.sh test --latest [ARGS]   the suite against the newest allowed versions, in .venv-latest
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES="python3 python3-venv python3-pip nginx-light haproxy openssh-server openssh-client wrk iproute2 procps util-linux tar coreutils elixir erlang-inets systemd dbus sudo"
# The lock file's resolver (only `./run.sh lock` uses it).
UV_VERSION="0.13.9"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# pip's warnings about this machine's extra index paths are noise: filtered.
quiet_pip() { "$@" 2> >(grep -v "is ignored" >&2); }

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

# install_venv DIR: the locked versions (default), or with `latest` the newest that
# pyproject.toml allows; bluegreen itself editable, without resolving anything more.
install_venv() {
    local venv="$1" latest="${2:-}"
    local inputs stamp
    inputs="$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
    stamp="$venv/.installed-$inputs"
    if [ ! -x "$venv/bin/python" ]; then
        echo ">> creating $venv"
        /usr/bin/python3 -m venv "$venv"
    fi
    if [ -n "$latest" ] || [ ! -f "$stamp" ]; then
        quiet_pip "$venv/bin/python" -m pip install -q --upgrade pip
        if [ -n "$latest" ]; then
            echo ">> installing the newest allowed Python dependencies into $venv"
            quiet_pip "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e '.[test,bench]'
        else
            echo ">> installing the locked Python dependencies (requirements.lock) into $venv"
            quiet_pip "$venv/bin/python" -m pip install -q --require-hashes -r requirements.lock
            quiet_pip "$venv/bin/python" -m pip install -q --no-deps -e .
            rm -f "$venv"/.installed-*
            touch "$stamp"
        fi
    fi
}

normalise() { tr 'A-Z_' 'a-z-' | sort; }

lock() {
    [ -x .venv-tools/bin/python ] || /usr/bin/python3 -m venv .venv-tools
    quiet_pip .venv-tools/bin/python -m pip install -q "uv==$UV_VERSION"
    .venv-tools/bin/uv pip compile pyproject.toml --extra test --extra bench --universal \
        --python-version 3.11 --generate-hashes --upgrade --quiet \
        --custom-compile-command "./run.sh lock" -o requirements.lock
}

cmd="${1:-}"
case "$cmd" in
    demo)
        shift; install_system; install_venv .venv
        exec .venv/bin/bluegreen demo "$@" ;;
    test)
        shift; install_system
        if [ "${1:-}" = "--latest" ]; then
            shift; install_venv .venv-latest latest
            echo ">> versions newer than requirements.lock:"
            comm -13 <(grep -E '^[A-Za-z0-9]' requirements.lock | sed 's/ .*//' | normalise) \
                <(.venv-latest/bin/python -m pip freeze --exclude-editable | normalise) | sed 's/^/   /'
            exec .venv-latest/bin/python -m pytest "$@"
        fi
        install_venv .venv
        exec .venv/bin/python -m pytest "$@" ;;
    lock)
        lock ;;
    *)
        echo "usage: ./run.sh demo [--keep] | ./run.sh test [--latest] [PYTEST ARGS] | ./run.sh lock" >&2
        exit 2 ;;
esac
