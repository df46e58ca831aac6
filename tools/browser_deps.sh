#!/bin/sh
# What tests/test_browser.py needs besides the test extra (which brings selenium): Chromium and its
# chromedriver. Installs them with apt-get when they are missing and this runs as root on a system
# with apt-get; otherwise it says what is missing and exits 0 (the browser test then skips, saying why).
set -eu
have() { command -v "$1" >/dev/null 2>&1; }
if { have chromium || have chromium-browser || have google-chrome; } && have chromedriver; then
    echo "browser test: Chromium and chromedriver found"
    exit 0
fi
if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "browser test: installing chromium and chromium-driver with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
        || echo "browser test: apt-get could not install chromium/chromium-driver; the browser test will skip"
else
    echo "browser test: no Chromium or chromedriver, and no root apt-get to install them; the browser test will skip"
fi
exit 0
