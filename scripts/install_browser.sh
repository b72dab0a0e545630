#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser tests (Playwright drives it by path; we never
# run `playwright install`, which would download a browser from outside the package registries).
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium is missing and this user cannot install it: run as root, or apt-get install chromium" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
