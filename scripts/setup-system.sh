#!/usr/bin/env bash
# Install the Debian packages maasbox needs to build and test, only those missing.
# Safe to run repeatedly; needs root or sudo when something is missing.
set -euo pipefail
# chromium and a CJK font: the end-to-end browser tests of the web UI (ui/e2e).
# WebKitGTK, appindicator, librsvg, libsoup: the Tauri desktop app (src-tauri); Xvfb, xwininfo
# (x11-utils) and ImageMagick: its window test.
PKGS=(build-essential pkg-config curl ca-certificates cmake clang libclang-dev python3 python3-venv python3-pip
  chromium fonts-wqy-microhei
  libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libsoup-3.0-dev xvfb x11-utils imagemagick)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
# The web UI is built with Node.js and npm (Debian's packages when none is installed).
if ! command -v npm >/dev/null; then
  missing=(nodejs npm)
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
