#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit tests on tiny random models, a few
# integration tests on the embedded real model, and browser tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
# Browser tests drive Debian's Chromium (a test tool's own browser download cannot work offline).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped"
fi
bash scripts/setup.sh
. .venv/bin/activate
export SAELAB_CACHE=${SAELAB_CACHE:-$PWD/.cache}
python -m pytest -q "$@"
