#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine:
#   - system services the tests run for real: Prometheus, its node exporter and Alertmanager,
#     a D-Bus session bus, dunst on Xvfb, Postfix and spamassassin;
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
    prometheus-alertmanager dbus libnotify-bin chromium chromium-driver procps >/dev/null
  # The fleet tests (tests/prometheus, tests/test_deploy.py): Prometheus with promtool, and
  # node exporter's textfile collector.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-node-exporter >/dev/null
  # What a person reads, on real receivers (and the end of a run on a real desktop,
  # tests/cards/test_desktop_end.py; emoji fonts for the outcome icons in dashboard
  # screenshots): dunst under Xvfb on a D-Bus session (with the
  # Adwaita icons and ImageMagick's `import` for a screenshot), Postfix on loopback and
  # spamassassin (tests/channels/test_dunst.py, test_email_postfix.py). Postfix is set up
  # as a local-only MTA; the tests start their own instance on 127.0.0.1 and the system
  # one is never started (Debian in a container: policy-rc.d; elsewhere it stays local).
  echo "postfix postfix/main_mailer_type select Local only" | $SUDO debconf-set-selections
  echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb dunst dbus-x11 adwaita-icon-theme imagemagick fonts-noto-color-emoji postfix spamassassin >/dev/null
fi
python -m pip install --quiet --upgrade pip
# Pinned exactly: an open range would pull a multi-GB CUDA build.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[all,test]"
