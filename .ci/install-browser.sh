#!/usr/bin/env bash
# Install Debian's Chromium and its driver for the admin's browser test
# (tests/test_admin_browser.py drives /usr/bin/chromium with Playwright).
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    echo "==> chromium is already installed"
    exit 0
fi

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

echo "==> installing chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -q
as_root apt-get install -y -q chromium chromium-driver
test -x /usr/bin/chromium
