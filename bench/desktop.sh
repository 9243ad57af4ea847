#!/usr/bin/env bash
# Desktop and headless footprint: binary sizes (release), the UI bundle (gzip), idle memory after
# start with no model loaded, and time from launch to a usable window (the setup form drawn on
# screen, found by its button colour in screenshots taken under Xvfb).
#   bash bench/desktop.sh            (builds release binaries and the UI first)
# Needs xvfb, x11-utils and imagemagick (scripts/setup-system.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
(cd ui && npm run build >/dev/null)
cargo build --release -p maasbox -p maasbox-desktop >/dev/null
target="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# RSS of a process and all its descendants (the desktop's WebKit web and network processes), MiB.
tree_rss() {
  local pids="$1" all="$1" next
  while next=$(pgrep -d' ' -P "${pids// /,}" 2>/dev/null); do all="$all $next"; pids="$next"; done
  local kb=0
  for p in $all; do kb=$((kb + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
  awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }'
}
accent_pixels() { # pixels near #2457d6 in window $2 on display $1
  import -window "$2" -display "$1" "$work/w.png" 2>/dev/null && convert "$work/w.png" rgb:- | python3 -c '
import sys; b = sys.stdin.buffer.read()
print(sum(1 for i in range(0, len(b) - 2, 3) if abs(b[i]-0x24) <= 6 and abs(b[i+1]-0x57) <= 6 and abs(b[i+2]-0xd6) <= 6))'
}

echo "== sizes"
gz=$(cat ui/dist/assets/*.js ui/dist/assets/*.css | gzip -9 | wc -c)
printf "%-40s %8.1f kB\n" "UI bundle, all JS+CSS (gzip -9)" "$(awk -v n="$gz" 'BEGIN { print n / 1000 }')"
printf "%-40s %8.1f MB\n" "maasbox (headless, release)" "$(awk -v n="$(stat -c %s "$target/maasbox")" 'BEGIN { print n / 1e6 }')"
printf "%-40s %8.1f MB\n" "maasbox-desktop (release)" "$(awk -v n="$(stat -c %s "$target/maasbox-desktop")" 'BEGIN { print n / 1e6 }')"

echo "== headless server: idle RSS after start (no model loaded)"
MAASBOX_LOG_FILE=false "$target/maasbox" serve --data-dir "$work/h" --port 0 >"$work/h.log" 2>&1 &
hp=$!
until grep -q "listening on" "$work/h.log"; do sleep 0.1; done
sleep 5
printf "%-40s %8s MiB\n" "maasbox serve" "$(tree_rss $hp)"
kill $hp; wait $hp 2>/dev/null || true

echo "== desktop under Xvfb: launch to usable window, idle RSS"
disp=":$((150 + $$ % 300))"
Xvfb "$disp" -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 &
until [ -e "/tmp/.X11-unix/X${disp#:}" ]; do sleep 0.05; done
for run in 1 2 3; do
  rm -rf "$work/d"
  t0=$(date +%s.%N)
  DISPLAY=$disp MAASBOX_STORAGE_DATA_DIR="$work/d" MAASBOX_SERVER_PORT=0 MAASBOX_LOG_FILE=false \
    "$target/maasbox-desktop" >"$work/d.log" 2>&1 &
  dp=$!
  while :; do
    id=$(DISPLAY=$disp xwininfo -root -tree 2>/dev/null | awk '/"maasbox":/ {print $1; exit}')
    if [ -n "$id" ] && [ "$(accent_pixels "$disp" "$id")" -gt 2000 ]; then break; fi
    sleep 0.05
  done
  t1=$(date +%s.%N)
  printf "%-40s %8.2f s\n" "run $run: launch → setup form on screen" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  if [ $run = 3 ]; then
    sleep 5
    printf "%-40s %8s MiB\n" "maasbox-desktop + WebKit processes" "$(tree_rss $dp)"
    printf "%-40s %8s MiB\n" "  of which maasbox-desktop itself" "$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$dp/status)"
  fi
  kill -TERM $dp; wait $dp 2>/dev/null || true
done
