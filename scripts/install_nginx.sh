#!/usr/bin/env bash
# Install Debian's nginx (used by deploy/nginx.conf and tests/test_slow_clients.py).
# Idempotent and quiet: does nothing and exits 0 when nginx is already installed.
#   bash scripts/install_nginx.sh
set -euo pipefail

if [ -x /usr/sbin/nginx ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_nginx.sh: need root (or sudo) to apt-get install nginx" >&2
        exit 1
    fi
fi

# nginx-light where the release still has it, else nginx; the service is not started here
# (policy-rc.d 101 keeps Debian's maintainer scripts from starting it on port 80).
log="$(mktemp)"
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
fi
trap 'rm -f "$log"; if [ -n "$policy" ]; then $SUDO rm -f "$policy"; fi' EXIT
install() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && { install nginx-light || install nginx; }; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_nginx.sh: apt-get could not install nginx" >&2
    exit 1
fi

if [ ! -x /usr/sbin/nginx ]; then
    echo "install_nginx.sh: /usr/sbin/nginx still missing after apt-get install" >&2
    exit 1
fi
