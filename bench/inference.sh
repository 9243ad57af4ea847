#!/usr/bin/env bash
# Inference benchmark: maasbox beside llama.cpp's llama-server and llama-cpp-python's OpenAI
# server, same SmolLM2 GGUF, same threads, interleaved in one run; prints one table.
#   bash bench/inference.sh            (defaults: 200-token prompts, 256 generated, greedy,
#                                        5 single-stream runs, 1/4/8/16 streaming clients)
#   BENCH_THREADS=2 BENCH_ARGS="--runs 3 --clients 1,8" bash bench/inference.sh
# Peers are built once into bench/cache (never committed): llama-server from the llama.cpp
# sources vendored in the PyPI sdist llama-cpp-python==0.3.36, with CMake; llama-cpp-python's
# server from the same sdist with pip (with --interrupt_requests false: by default a new request
# aborts the running one). Figures go to bench/out/ (one JSON per server, table.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/bench/cache
OUT=$ROOT/bench/out
LCP_VERSION=0.3.36
THREADS=${BENCH_THREADS:-$(nproc)}
PARALLEL=8
CTX=8192
MODEL=$ROOT/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$CACHE" "$OUT"

python3 models/fetch.py
cargo build --release -q -p maasbox -p maasbox-bench
BIN=${CARGO_TARGET_DIR:-target}/release/maasbox
BENCH=${CARGO_TARGET_DIR:-target}/release/maasbox-bench

# --- peers, built once ---------------------------------------------------------------------
[ -x "$CACHE/venv/bin/python" ] || python3 -m venv "$CACHE/venv"
SDIST=$CACHE/llama_cpp_python-$LCP_VERSION.tar.gz
[ -f "$SDIST" ] || "$CACHE/venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$CACHE"
SRC=$CACHE/llama_cpp_python-$LCP_VERSION
[ -d "$SRC" ] || tar xzf "$SDIST" -C "$CACHE"
LLAMA_SERVER=$SRC/vendor/llama.cpp/build/bin/llama-server
if [ ! -x "$LLAMA_SERVER" ]; then
  echo "building llama-server (once) ..." >&2
  cmake -S "$SRC/vendor/llama.cpp" -B "$SRC/vendor/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build "$SRC/vendor/llama.cpp/build" --target llama-server -j"$(nproc)" >/dev/null
fi
if ! "$CACHE/venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  echo "building llama-cpp-python (once) ..." >&2
  CMAKE_ARGS="-DLLAVA_BUILD=OFF" "$CACHE/venv/bin/pip" install -q "$SDIST[server]"
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "server did not start: $1" >&2; return 1; }
PIDS=()
DATA=$(mktemp -d)
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
# shellcheck disable=SC2206
EXTRA=(${BENCH_ARGS:-})
echo "threads $THREADS, parallel slots $PARALLEL, context $CTX, $(nproc) cores" >&2

# All three servers run side by side (idle ones use no CPU); the load generator interleaves
# them, so a change in the machine's speed during the run falls on all of them alike.
P1=$(port)
MAASBOX_LOG_FILE=false RUST_LOG=warn MAASBOX_ENGINE_THREADS=$THREADS MAASBOX_ENGINE_PARALLEL=$PARALLEL \
  MAASBOX_ENGINE_CONTEXT_SIZE=$CTX "$BIN" serve --data-dir "$DATA" --port "$P1" >"$OUT/maasbox.log" 2>&1 &
PIDS+=($!)
P2=$(port)
"$LLAMA_SERVER" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -np "$PARALLEL" -c "$CTX" --port "$P2" \
  >"$OUT/llama-server.log" 2>&1 &
PIDS+=($!)
P3=$(port)
"$CACHE/venv/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias smollm2 --n_threads "$THREADS" \
  --n_threads_batch "$THREADS" --n_ctx 2048 --interrupt_requests false --port "$P3" >"$OUT/llama-cpp-python.log" 2>&1 &
PIDS+=($!)
wait_up "http://127.0.0.1:$P1/health"
wait_up "http://127.0.0.1:$P2/health"
wait_up "http://127.0.0.1:$P3/v1/models"

export MAASBOX_URL=http://127.0.0.1:$P1
"$BIN" model import "$MODEL" --name smollm2:135m --data-dir "$DATA" >/dev/null
CODE=$(cat "$DATA/setup.token")
curl -sf -XPOST "$MAASBOX_URL/api/v1/auth/setup" -H 'content-type: application/json' \
  -d "{\"code\":\"$CODE\",\"username\":\"operator\",\"password\":\"Bench-Passw0rd-1\"}" >/dev/null
KEY=$("$BIN" key create --name bench --data-dir "$DATA" | sed -n 's/.*store it now): //p')

"$BENCH" run --out "$OUT" "${EXTRA[@]}" \
  --target "maasbox=$MAASBOX_URL=smollm2:135m=$KEY" \
  --target "llama-server=http://127.0.0.1:$P2=smollm2" \
  --target "llama-cpp-python=http://127.0.0.1:$P3=smollm2" | tee "$OUT/table.md"
