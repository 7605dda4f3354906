#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine:
#   - system services the tests run for real: Prometheus, its node exporter and Alertmanager,
#     a D-Bus session bus;
#   - headless Chromium and its chromedriver, for the dashboard's browser tests (Selenium uses
#     these; nothing downloads a browser);
#   - a CPU-only PyTorch (torch==2.13.0; on a CUDA machine install your CUDA torch first);
#   - this package in editable mode with every extra and the test tools.
# A user who only wants the library (it is not on PyPI yet) runs, in this folder,
# pip install ".[all]"   or builds a wheel: python -m build && pip install dist/afs_callbacks-*.whl
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus-alertmanager dbus libnotify-bin chromium chromium-driver >/dev/null
  # The fleet tests (tests/prometheus, tests/test_deploy.py): Prometheus with promtool, and
  # node exporter's textfile collector.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-node-exporter >/dev/null
  # The end of a run on a real desktop (tests/cards/test_desktop_end.py: dunst under Xvfb,
  # ImageMagick's import for its screenshot) and the outcome icons in dashboard screenshots.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb dunst imagemagick fonts-noto-color-emoji >/dev/null
fi
python -m pip install --quiet --upgrade pip
# Pinned exactly: an open range would pull a multi-GB CUDA build.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[all,test]"
