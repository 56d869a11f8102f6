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
#   gate-expires, gate-no-headers  the full Gate with the token-expires
#                 header on every response (the default sends it only in a
#                 token's last 7 days, so the bench token gets none), and
#                 without the success RateLimit headers: what each header
#                 costs;
#   gate-no-usage the full Gate without per-token usage counting
#                 (--no-usage): what counting costs;
#   gate-metrics  the full Gate with the admin listener on, so a
#                 Prometheus recorder records every metric: its cost;
#   gate-redis    the full Gate with its rate state in Redis (REDIS_URL,
#                 default redis://127.0.0.1:6379): the cost of shared state;
#   shared3       three axum-notes on one PostgreSQL database (POSTGRES_URL,
#                 default postgres://postgres@127.0.0.1:5432/test; the
#                 script creates a database of its own with psql and drops
#                 it) and one Redis, each under a third of the connections
#                 (one wrk per instance); req/s and CPU are the three's sum,
#                 p99 the worst of the three;
# naive, bearer, authenticate and checks serve the same route from the
# bench-notes example. A mode ending in @base (gate@base, gate-redis@base)
# runs axum-notes from BASE instead (a build of another commit, copied
# aside), so a change is measured beside its baseline in the same run. Prints
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
cleanup() {
  [ -n "$pid" ] && kill $pid 2>/dev/null
  [ -n "$pg_db" ] && psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)"
  command -v redis-cli >/dev/null && redis-cli -u "$redis" --scan --pattern "{$prefix}*" | xargs -r redis-cli -u "$redis" del >/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
db="$dir/tokens.db"
issue() { target/release/tokengate "$@" issue --name bench --subject bench --scope notes:read \
  --audience notes --ttl 1d --rate 100000000/s --burst 100000000 2>/dev/null; }
token=$(issue --db "$db")
redis="${REDIS_URL:-redis://127.0.0.1:6379}"
prefix="tg-e2e-$$"
pg_db=""
case " ${modes[*]} " in *" shared3 "*)
  pg_admin="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
  pg_db="tg_e2e_$$"
  psql -q "$pg_admin" -c "CREATE DATABASE $pg_db"
  pg_url="${pg_admin%/*}/$pg_db"
  pg_token=$(issue --db "$pg_url" --pepper-file "$dir/pepper") ;; esac

# Per thread kind of the server: "comm utime stime" in clock ticks.
ticks() { for t in /proc/"$1"/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f14,15 "$t/stat")"; done; }

run() { # mode -> "rps p99 cpu"
  local notes=target/release/axum-notes
  case "$1" in *@base) notes=${BASE:?"$1 needs BASE=path/to/axum-notes"} ;; esac
  set -- "${1%@base}"
  local server=("$notes" --db "$db" --audit-log "$dir/audit.jsonl"
    --listen 127.0.0.1:39999 --pre-auth-rate 100000000)
  local ports=(39999) bearer=$token
  case "$1" in
    bare) server+=(--no-gate) ;;
    gate) ;;
    gate-no-usage) server+=(--no-usage) ;;
    gate-redis) server+=(--redis "$redis" --redis-prefix "$prefix") ;;
    gate-metrics) server+=(--admin-listen 127.0.0.1:0) ;;
    gate-expires) server+=(--token-expires-always) ;;
    gate-no-headers) server+=(--no-rate-headers) ;;
    shared3) ports=(39999 39998 39997); bearer=$pg_token ;;
    discard) server+=(--discard-audit) ;;
    naive | bearer | authenticate | checks) server=(target/release/examples/bench-notes --stack "$1"
      --listen 127.0.0.1:39999 --token "$token" --log "$dir/$1.jsonl" --db "$db") ;;
    *) echo "unknown mode $1" >&2; exit 2 ;;
  esac
  pid=""
  for port in "${ports[@]}"; do
    if [ "$1" = shared3 ]; then
      server=("$notes" --db "$pg_url" --pepper-file "$dir/pepper"
        --redis "$redis" --redis-prefix "$prefix" --audit-log "$dir/audit-$port.jsonl"
        --listen 127.0.0.1:$port --pre-auth-rate 100000000)
    fi
    "${server_on[@]}" "${server[@]}" >"$dir/server-$port.log" 2>&1 &
    pid="$pid $!"
    for _ in $(seq 1 100); do
      curl -fs http://127.0.0.1:$port/healthz >/dev/null 2>&1 && break
      sleep 0.05
    done
  done
  for p in $pid; do ticks "$p"; done >"$dir/before"
  local each=$(( conns / ${#ports[@]} )) waits=""
  for port in "${ports[@]}"; do
    "${client_on[@]}" wrk -t"$threads" -c"$each" -d"$duration" --latency \
      -H "Authorization: Bearer $bearer" http://127.0.0.1:$port/notes >"$dir/wrk-$port.txt" &
    waits="$waits $!"
  done
  wait $waits
  for p in $pid; do ticks "$p"; done >"$dir/after"
  # axum-notes shuts down gracefully on SIGINT (flushing its audit log);
  # bench-notes installs no handler, and a background job ignores SIGINT.
  case "$1" in naive | bearer | authenticate | checks) kill $pid ;; *) kill -INT $pid ;; esac
  for p in $pid; do wait "$p" || true; done
  pid=""
  cat "$dir"/wrk-*.txt >"$dir/wrk.txt"
  rm -f "$dir"/wrk-*.txt
  if grep -q "Non-2xx" "$dir/wrk.txt"; then
    echo "$1: some responses were not 2xx:" >&2
    grep "Non-2xx" "$dir/wrk.txt" >&2
  fi
  local rps p99 requests tick cpu
  rps=$(awk '/Requests\/sec/ {s += $2} END {printf "%.2f", s}' "$dir/wrk.txt")
  p99=$(awk '$1 == "99%" { v = $2; k = 1
      if (v ~ /ms$/) k = 1000; else if (v ~ /us$/) k = 1; else if (v ~ /s$/) k = 1e6
      gsub(/[a-z]/, "", v); if (v * k > m) m = v * k }
    END { printf "%.0fus", m }' "$dir/wrk.txt")
  requests=$(awk '/requests in/ {s += $1} END {print s}' "$dir/wrk.txt")
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
