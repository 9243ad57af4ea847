#!/usr/bin/env bash
# Gateway benchmark, two parts, one run:
#  1. Model import from a URL: maasbox's download (hashing, fsync, GGUF check, registration)
#     beside curl fetching the same file from the same local HTTP server; median of 5.
#  2. Upstream pass-through: short chat requests (16-token prompt, 1 generated token) sent to a
#     second maasbox directly and through a first maasbox that routes the model to it; p50/p99
#     at 1 and 8 clients, interleaved.
#   bash bench/gateway.sh          (BENCH_THREADS=2 to pin the engine's threads)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
THREADS=${BENCH_THREADS:-$(nproc)}
MODEL=$ROOT/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf
python3 models/fetch.py >/dev/null
cargo build --release -q -p maasbox -p maasbox-bench
BIN=${CARGO_TARGET_DIR:-target}/release/maasbox
BENCH=${CARGO_TARGET_DIR:-target}/release/maasbox-bench

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 300); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
PIDS=()
TMP=$(mktemp -d)
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT

# Start a maasbox on a fresh data dir; prints its port. Setup is completed with the setup code.
serve() {
  local name=$1 p
  p=$(port)
  mkdir -p "$TMP/$name"
  MAASBOX_LOG_FILE=false RUST_LOG=warn MAASBOX_ENGINE_THREADS=$THREADS MAASBOX_ENGINE_PARALLEL=8 \
    "$BIN" serve --data-dir "$TMP/$name" --port "$p" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  wait_up "http://127.0.0.1:$p/health"
  curl -sf -X POST "http://127.0.0.1:$p/api/v1/auth/setup" -H 'content-type: application/json' \
    -d "{\"code\":\"$(cat "$TMP/$name/setup.token")\",\"username\":\"bench\",\"password\":\"Mx-Str0ng-Passw0rd!\"}" >/dev/null
  echo "$p"
}
owner() { cat "$TMP/$1/owner.token"; }
api() { local who=$1 p=$2 method=$3 path=$4; shift 4; curl -sf -X "$method" "http://127.0.0.1:$p$path" -H "authorization: Bearer $(owner "$who")" -H 'content-type: application/json' "$@"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

PA=$(serve a)
PB=$(serve b)

# --- 1. import throughput --------------------------------------------------------------------
PH=$(port)
python3 -m http.server "$PH" --bind 127.0.0.1 --directory "$ROOT/models/cache" >/dev/null 2>&1 &
PIDS+=($!)
wait_up "http://127.0.0.1:$PH/"
URL="http://127.0.0.1:$PH/$(basename "$MODEL")"
SIZE=$(stat -c %s "$MODEL")
CURL=() DISK=() MBX=()
for i in 1 2 3 4 5; do
  CURL+=("$(curl -s -o /dev/null -w '%{time_total}' "$URL")")
  t0=$(date +%s.%N)
  curl -s -o "$TMP/copy.gguf" "$URL" && sha256sum "$TMP/copy.gguf" >/dev/null && sync "$TMP/copy.gguf"
  t1=$(date +%s.%N)
  DISK+=("$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')")
  rm -f "$TMP/copy.gguf"
  t0=$(date +%s.%N)
  id=$(api a "$PA" POST /api/v1/models -d "{\"url\":\"$URL\",\"name\":\"bench-$i\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  last=$(api a "$PA" GET "/api/v1/models/imports/$id/events" -N | grep '^data:' | tail -1)
  t1=$(date +%s.%N)
  echo "$last" | grep -q '"phase":"done"' || { echo "import failed: $last" >&2; exit 1; }
  MBX+=("$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')")
  api a "$PA" DELETE "/api/v1/models/bench-$i" >/dev/null
done
c=$(printf '%s\n' "${CURL[@]}" | median)
d=$(printf '%s\n' "${DISK[@]}" | median)
m=$(printf '%s\n' "${MBX[@]}" | median)
echo
echo "Import of $(basename "$MODEL") ($((SIZE / 1000000)) MB) from a local HTTP server, median of 5:"
echo "| client | seconds | MB/s |"
echo "|--------|--------:|-----:|"
mbs() { awk -v s="$SIZE" -v t="$1" 'BEGIN { print s / t / 1e6 }'; }
printf '| curl -o /dev/null | %.3f | %.0f |\n' "$c" "$(mbs "$c")"
printf '| curl -o FILE; sha256sum FILE; sync FILE | %.3f | %.0f |\n' "$d" "$(mbs "$d")"
printf '| maasbox model pull (download + SHA-256 + fsync + GGUF check + register) | %.3f | %.0f |\n' "$m" "$(mbs "$m")"

# --- 2. upstream pass-through latency --------------------------------------------------------
api b "$PB" POST /api/v1/models -d "{\"path\":\"$MODEL\",\"name\":\"smollm2:135m\"}" >/dev/null
KB=$(api b "$PB" POST /api/v1/keys -d '{"name":"for-a"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
api a "$PA" POST /api/v1/upstreams -d "{\"name\":\"b\",\"base_url\":\"http://127.0.0.1:$PB/v1\",\"api_key\":\"$KB\",\"models\":[\"smollm2:135m\"],\"priority\":1}" >/dev/null
KA=$(api a "$PA" POST /api/v1/keys -d '{"name":"client"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
echo
echo "Chat, 16-token prompt, 1 generated token, non-streaming; $THREADS engine threads on $(nproc) cores:"
"$BENCH" latency --target "direct=http://127.0.0.1:$PB=smollm2:135m=$KB" \
  --target "through-gateway=http://127.0.0.1:$PA=smollm2:135m=$KA" --clients 1,8 --rounds "${BENCH_ROUNDS:-10}"
