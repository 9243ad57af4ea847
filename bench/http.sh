#!/usr/bin/env bash
# HTTP benchmark: maasbox's authenticated read and audited writes beside a bare axum handler,
# on loopback, in the same run. Prints requests/s and p99 at 64 connections.
#   bash bench/http.sh [duration_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"
CONNS=64
THREADS=2
command -v wrk >/dev/null || { sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo; $sudo apt-get install -y wrk; }
cargo build --release -q -p maasbox && cargo build --release -q -p maasbox-api --example bare_axum
BIN=target/release/maasbox
DATA=$(mktemp -d)
PORT=18686
BARE_PORT=18687
cleanup() { kill "${MB_PID:-}" "${BARE_PID:-}" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

MAASBOX_LOG_FILE=false RUST_LOG=warn "$BIN" serve --data-dir "$DATA" --port "$PORT" >"$DATA/serve.out" 2>&1 &
MB_PID=$!
target/release/examples/bare_axum "$BARE_PORT" &
BARE_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
CODE=$(cat "$DATA/setup.token")
curl -sf -XPOST "http://127.0.0.1:$PORT/api/v1/auth/setup" -H 'content-type: application/json' \
  -d "{\"code\":\"$CODE\",\"username\":\"operator\",\"password\":\"Bench-Passw0rd-1\"}" >/dev/null
OWNER=$(cat "$DATA/owner.token")
KEY=$(curl -sf -XPOST "http://127.0.0.1:$PORT/api/v1/keys" -H "authorization: Bearer $OWNER" \
  -H 'content-type: application/json' -d '{"name":"bench"}' | sed 's/.*"secret":"\([^"]*\)".*/\1/')

run() { # name, wrk args...
  local name=$1; shift
  local out; out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency "$@")
  local rps p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx/ {print $5}' <<<"$out"); errs=${errs:-0}
  printf "%-44s %12s %10s %8s\n" "$name" "$rps" "$p99" "$errs"
}

echo "wrk -t$THREADS -c$CONNS -d${DUR}s on $(nproc) cores, $(date -u +%F)"
printf "%-44s %12s %10s %8s\n" "scenario" "req/s" "p99" "non-2xx"
run "bare axum GET (baseline)" "http://127.0.0.1:$BARE_PORT/api/v1/auth/me"
run "maasbox GET /api/v1/auth/me (API key)" -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/api/v1/auth/me"
MAASBOX_BENCH_TOKEN=$KEY run "maasbox create+revoke key (audited writes)" -s bench/write.lua "http://127.0.0.1:$PORT"
EVENTS=$(curl -sf "http://127.0.0.1:$PORT/api/v1/audit/verify" -H "authorization: Bearer $KEY")
echo "audit chain after the run: $EVENTS" | cut -c1-200
