#!/bin/sh
# Make sure the browser tests (tests/test_browser.py) have a Chromium to drive. `make test` runs this.
# Playwright's own browser download (`playwright install`) is not used: it fetches builds from outside the
# package registries. Debian's `chromium` package is installed instead when it is missing and this user
# may install packages (root, or password-less sudo). Otherwise this prints exactly what to install and
# carries on: the other tests still run, and the browser tests fail with the same advice.
set -eu

found() {
    [ -n "${CHROMIUM_PATH:-}" ] && [ -x "$CHROMIUM_PATH" ] && return 0
    [ -x /usr/lib/chromium/chromium ] && return 0
    command -v chromium >/dev/null 2>&1 && return 0
    command -v chromium-browser >/dev/null 2>&1 && return 0
    return 1
}

found && exit 0

if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        as_root=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root="sudo -n"
    else
        as_root="none"
    fi
    if [ "$as_root" != none ]; then
        echo "Installing Debian's chromium for the browser tests (apt-get) ..."
        $as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends chromium >/dev/null
        found && exit 0
    fi
fi

cat >&2 <<'MSG'
warning: Chromium is not installed, and this user cannot install it here.
  The browser tests (tests/test_browser.py) will fail. Install it, then run `make test` again:
    Debian/Ubuntu:  sudo apt-get install chromium
    elsewhere:      install Chromium or Chrome and set CHROMIUM_PATH=/path/to/the/chromium/binary
MSG
exit 0
