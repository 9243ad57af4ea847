#!/usr/bin/env bash
# Run the maasbox appliance: install what it needs, build it (release), start it, and register
# the default models (SmolLM2 chat, all-MiniLM-L6-v2 embeddings) on first start.
#   scripts/run.sh [maasbox serve options, e.g. --port 9000 --data-dir /srv/maasbox]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh
python3 models/fetch.py
(cd ui && scripts/install.sh && npm run build)
cargo build --release -p maasbox
BIN=${CARGO_TARGET_DIR:-target}/release/maasbox
MODELS=${MAASBOX_MODELS_DIR:-models/cache}

# The admin CLI finds the owner token through the same --data-dir / --config as the server.
CLIENT=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --data-dir | --config) CLIENT+=("${args[$i]}" "${args[$((i + 1))]:-}") ;;
    --data-dir=* | --config=*) CLIENT+=("${args[$i]}") ;;
  esac
done

LOG=$(mktemp)
"$BIN" serve "$@" > >(tee "$LOG") &
PID=$!
trap 'kill -TERM $PID 2>/dev/null' INT TERM
URL=""
for _ in $(seq 300); do
  URL=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$LOG" | head -1)
  [ -n "$URL" ] || ! kill -0 $PID 2>/dev/null && break
  sleep 0.1
done
if [ -n "$URL" ]; then
  have=$(MAASBOX_URL=$URL "$BIN" model list --json "${CLIENT[@]}" 2>/dev/null || true)
  register() { # file name
    case "$have" in *"\"id\": \"$2:"*|*"\"id\": \"$2\""*) return ;; esac
    MAASBOX_URL=$URL "$BIN" model import "$MODELS/$1" --name "$2" "${CLIENT[@]}" || true
  }
  register SmolLM2-135M-Instruct.Q4_1.gguf smollm2:135m
  register all-MiniLM-L6-v2.F32.gguf all-minilm-l6-v2
fi
rm -f "$LOG"
wait $PID
