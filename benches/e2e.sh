#!/usr/bin/env bash
# End to end on loopback: axum-notes with the full Gate and without it
# (--no-gate), alternating in each round, under wrk. More modes, in the
# order given in MODES:
#   discard       the full Gate with each audit record dropped where it is
#                 handed over (no audit file);
#   naive         the naive hand-written stack of benches/support/naive.rs;
#   bearer        tower-http's bearer check, a comparison with one token
#                 (the floor: the least a token check can cost);
#   authenticate  tokengate's authenticate layer alone (the first rung);
#   checks        the gate's checks as separate layers, without the audit
#                 layer (the second rung);
# the last four serve the same route from the bench-notes example. Prints
# req/s and p99 latency per run, each mode's ratio to bare in the round,
# and the server's CPU time per request (user and system, request workers
# and the audit writer apart, from /proc). Bounded: ROUNDS rounds of
# DURATION per run.
#
# PIN=1 puts the server on CPU 0 and a one-thread wrk on CPU 1, so the two
# do not trade cores and req/s follows the server's cost per request.
#
# Needs wrk (Debian: apt-get install wrk). Usage:
#   ROUNDS=3 DURATION=5s CONNS=32 PIN=0 MODES="bare gate" benches/e2e.sh
#   MODES="bare bearer authenticate checks discard gate naive" PIN=1 benches/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
rounds="${ROUNDS:-3}"; duration="${DURATION:-5s}"; conns="${CONNS:-32}"
read -r -a modes <<<"${MODES:-bare gate}"
server_on=(); client_on=(); threads=2
if [ "${PIN:-0}" = 1 ]; then server_on=(taskset -c 0); client_on=(taskset -c 1); threads=1; fi
cargo build --release -q -p axum-notes -p tokengate-cli
case " ${modes[*]} " in *" naive "* | *" bearer "* | *" authenticate "* | *" checks "*)
  cargo build --release -q -p tokengate-tests --example bench-notes ;; esac
dir=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
db="$dir/tokens.db"
token=$(target/release/tokengate --db "$db" issue --name bench --subject bench --scope notes:read \
  --audience notes --ttl 1d --rate 100000000/s --burst 100000000 2>/dev/null)

# Per thread kind of the server: "comm utime stime" in clock ticks.
ticks() { for t in /proc/"$1"/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f14,15 "$t/stat")"; done; }

run() { # mode -> "rps p99 cpu"
  local server=(target/release/axum-notes --db "$db" --audit-log "$dir/audit.jsonl"
    --listen 127.0.0.1:39999 --pre-auth-rate 100000000)
  case "$1" in
    bare) server+=(--no-gate) ;;
    gate) ;;
    discard) server+=(--discard-audit) ;;
    naive | bearer | authenticate | checks) server=(target/release/examples/bench-notes --stack "$1"
      --listen 127.0.0.1:39999 --token "$token" --log "$dir/$1.jsonl" --db "$db") ;;
    *) echo "unknown mode $1" >&2; exit 2 ;;
  esac
  "${server_on[@]}" "${server[@]}" >"$dir/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -fs http://127.0.0.1:39999/healthz >/dev/null 2>&1 && break
    sleep 0.05
  done
  ticks "$pid" >"$dir/before"
  "${client_on[@]}" wrk -t"$threads" -c"$conns" -d"$duration" --latency \
    -H "Authorization: Bearer $token" http://127.0.0.1:39999/notes >"$dir/wrk.txt"
  ticks "$pid" >"$dir/after"
  # axum-notes shuts down gracefully on SIGINT (flushing its audit log);
  # bench-notes installs no handler, and a background job ignores SIGINT.
  case "$1" in bare | gate | discard) kill -INT "$pid" ;; *) kill "$pid" ;; esac
  wait "$pid" || true; pid=""
  if grep -q "Non-2xx" "$dir/wrk.txt"; then
    echo "$1: some responses were not 2xx:" >&2
    grep "Non-2xx" "$dir/wrk.txt" >&2
  fi
  local rps p99 requests tick cpu
  rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$dir/wrk.txt")
  requests=$(awk '/requests in/ {print $1}' "$dir/wrk.txt")
  tick=$(getconf CLK_TCK)
  # Microseconds of CPU per request: workers (tokio-rt-worker) and every
  # other thread (the audit writer: tokengate-audit, or tracing-appender's),
  # user+system.
  cpu=$(paste "$dir/before" "$dir/after" | awk -v n="$requests" -v hz="$tick" '
    $1 == "tokio-rt-worker" { wu += $5 - $2; ws += $6 - $3 }
    $1 != "tokio-rt-worker" { au += $5 - $2; as += $6 - $3 }
    END { k = 1e6 / hz / n; printf "workers:%.1fu+%.1fs,others:%.1fu+%.1fs", wu*k, ws*k, au*k, as*k }')
  echo "$rps $p99 $cpu"
}

for round in $(seq 1 "$rounds"); do
  line="round $round:"; cpu="  server CPU µs per request:"; bare_rps=""
  for mode in "${modes[@]}"; do
    read -r rps p99 used < <(run "$mode")
    [ "$mode" = bare ] && bare_rps=$rps
    line="$line $mode $rps req/s (p99 $p99)"
    if [ "$mode" != bare ] && [ -n "$bare_rps" ]; then
      line="$line $(awk -v m="$rps" -v b="$bare_rps" 'BEGIN { printf "%.2f", m / b }')x bare"
    fi
    line="$line;"; cpu="$cpu $mode $used;"
  done
  echo "$line"
  echo "$cpu"
done
