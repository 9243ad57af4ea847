#!/usr/bin/env bash
# Knowledge-index benchmark: a generated corpus of mixed English (70%) and Chinese (30%) chunks,
# ingested through the real all-MiniLM-L6-v2 embedding model and the sled store, then keyword,
# vector and hybrid search timed; faiss-cpu IndexFlatIP and bm25s (both from PyPI) run on the
# same vectors and texts. Prints one table per corpus size (tables also in bench/out/).
#   bash bench/knowledge.sh                 (10k and 100k chunks, 2 threads; 100k takes ~35 min
#                                            on 2 cores, almost all of it embedding)
#   BENCH_SIZES="10000" BENCH_THREADS=4 bash bench/knowledge.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${BENCH_THREADS:-2}
SIZES=${BENCH_SIZES:-"10000 100000"}
OUT=bench/out
python3 models/fetch.py
cargo build --release -q -p maasbox-bench
BENCH=${CARGO_TARGET_DIR:-target}/release/maasbox-bench
VENV=bench/cache/kb-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q faiss-cpu==1.15.1 bm25s==0.3.16 numpy
for n in $SIZES; do
  dir=$OUT/kb$n
  mkdir -p "$dir"
  # BENCH_REUSE=1 re-measures search on the vectors of an earlier run (skips the long embedding)
  "$BENCH" knowledge --model models/cache/all-MiniLM-L6-v2.F32.gguf --chunks "$n" --threads "$THREADS" --out "$dir" \
    ${BENCH_REUSE:+--reuse-vectors} > /dev/null
  "$VENV/bin/python" bench/knowledge_peers.py "$dir" "$THREADS" | tee "$dir/table.md"
done
