#!/usr/bin/env bash
# The soak: three axum-notes instances on PostgreSQL and Redis under mixed
# load while PostgreSQL, Redis and the instances fail on a schedule
# (benches/support/soak/main.rs says which and what is asserted). Prints the
# faults and a table; exits non-zero when an assertion fails.
#
# It stops and starts the machine's PostgreSQL and Redis: run it alone.
# Both are started again (SOAK_PG_START, SOAK_REDIS_START, by default the
# machine's own commands) even when the run fails.
#
# Usage: DURATION=60s benches/soak.sh      # the short run
#        DURATION=10m benches/soak.sh      # the long one
set -euo pipefail
cd "$(dirname "$0")/.."

export DURATION=${DURATION:-60s}
PG_START=${SOAK_PG_START:-"pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"}
REDIS_START=${SOAK_REDIS_START:-"redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"}
export SOAK_PG_START=$PG_START SOAK_REDIS_START=$REDIS_START

restart_services() {
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || sh -c "$REDIS_START" || true
  pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 || sh -c "$PG_START" || true
}
trap restart_services EXIT

cargo build -q --release -p axum-notes -p tokengate-cli
cargo build -q --release --example soak
target/release/examples/soak
