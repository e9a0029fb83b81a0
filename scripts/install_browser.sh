#!/usr/bin/env bash
# Install Debian's headless Chromium and its WebDriver (used by tests/test_browser.py).
# Idempotent and quiet: does nothing and exits 0 when both are already installed.
#   bash scripts/install_browser.sh
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: need root (or sudo) to apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi

# Quiet on success; on failure, show apt's output.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
              chromium chromium-driver; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_browser.sh: apt-get could not install chromium chromium-driver" >&2
    exit 1
fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "install_browser.sh: chromium or chromedriver still missing after apt-get install" >&2
    exit 1
fi
