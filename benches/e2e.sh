#!/usr/bin/env bash
# End to end on loopback: axum-notes with the full Gate and without it
# (--no-gate), alternating in each round, under wrk. Prints req/s and p99
# latency per run and the gate/bare ratio of each round. Bounded: ROUNDS
# rounds of DURATION per run.
#
# Needs wrk (Debian: apt-get install wrk). Usage:
#   ROUNDS=3 DURATION=5s CONNS=32 benches/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
rounds="${ROUNDS:-3}"; duration="${DURATION:-5s}"; conns="${CONNS:-32}"
cargo build --release -q -p axum-notes -p tokengate-cli
dir=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
db="$dir/tokens.db"
token=$(target/release/tokengate --db "$db" issue --name bench --subject bench --scope notes:read \
  --audience notes --ttl 1d --rate 100000000/s --burst 100000000 2>/dev/null)

run() { # mode -> "rps p99"
  local flags=()
  [ "$1" = bare ] && flags=(--no-gate)
  target/release/axum-notes --db "$db" --audit-log "$dir/audit.jsonl" --listen 127.0.0.1:39999 \
    --pre-auth-rate 100000000 "${flags[@]}" >"$dir/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -fs http://127.0.0.1:39999/healthz >/dev/null 2>&1 && break
    sleep 0.05
  done
  wrk -t2 -c"$conns" -d"$duration" --latency -H "Authorization: Bearer $token" \
    http://127.0.0.1:39999/notes >"$dir/wrk.txt"
  kill -INT "$pid"; wait "$pid" || true; pid=""
  if grep -q "Non-2xx" "$dir/wrk.txt"; then
    echo "$1: some responses were not 2xx:" >&2
    grep "Non-2xx" "$dir/wrk.txt" >&2
  fi
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$dir/wrk.txt")
  echo "$rps $p99"
}

for round in $(seq 1 "$rounds"); do
  read -r bare_rps bare_p99 < <(run bare)
  read -r gate_rps gate_p99 < <(run gate)
  ratio=$(awk -v g="$gate_rps" -v b="$bare_rps" 'BEGIN { printf "%.2f", g / b }')
  echo "round $round: bare $bare_rps req/s (p99 $bare_p99), gate $gate_rps req/s (p99 $gate_p99), gate/bare $ratio"
done
