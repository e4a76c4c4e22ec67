#!/bin/sh
# Best effort, for the chat page's browser test (tests/test_chat_page.py, skipped without it):
# headless Chromium and its driver from the system's packages. Only as root with apt-get, and
# not when CYLLAMA_NO_BROWSER is set; never fails the caller.
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
[ -n "$CYLLAMA_NO_BROWSER" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tools/install_browser.sh: no chromium; the browser test will be skipped (install chromium and chromium-driver)"
    exit 0
fi
echo "tools/install_browser.sh: installing chromium and chromium-driver for the browser test"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } \
  || echo "tools/install_browser.sh: could not install chromium; the browser test will be skipped"
exit 0
