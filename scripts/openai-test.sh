#!/usr/bin/env bash
# Run the official openai Python client against the real maasbox binary and models.
#   scripts/openai-test.sh [path to maasbox binary]   (default: target/debug/maasbox)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/maasbox}"
MODELS="${MAASBOX_MODELS_DIR:-models/cache}"
VENV="$MODELS/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "openai>=1.50,<3"
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MAASBOX_LOG_FILE=false MAASBOX_ENGINE_THREADS=2 "$BIN" serve --data-dir "$DATA" --port "$PORT" >"$DATA/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
URL="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done
export MAASBOX_URL="$URL"
"$BIN" model import "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" --name smollm2:135m --data-dir "$DATA"
"$BIN" model import "$MODELS/all-MiniLM-L6-v2.F32.gguf" --name all-minilm-l6-v2 --data-dir "$DATA"
# The key needs an owner: complete setup first.
CODE=$(cat "$DATA/setup.token")
curl -sf -XPOST "$URL/api/v1/auth/setup" -H 'content-type: application/json' \
  -d "{\"code\":\"$CODE\",\"username\":\"operator\",\"password\":\"Client-Test-Passw0rd\"}" >/dev/null
KEY=$("$BIN" key create --name openai-test --data-dir "$DATA" | sed -n 's/.*store it now): //p')
"$BIN" kb create docs --public --data-dir "$DATA" >/dev/null
"$BIN" kb add docs assets/samples/guide.md assets/samples/contract.ofd --data-dir "$DATA" >/dev/null
MAASBOX_BASE_URL="$URL/v1" MAASBOX_API_KEY="$KEY" MAASBOX_CHAT_MODEL=smollm2:135m MAASBOX_EMBED_MODEL=all-minilm-l6-v2:latest MAASBOX_KB=docs \
  "$VENV/bin/python" tests/python/openai_client.py
