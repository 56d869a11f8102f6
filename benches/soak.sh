#!/usr/bin/env bash
# The soak: three axum-notes instances on one token store and one Redis
# under mixed load while PostgreSQL, Redis, the audit disks and the
# instances fail on a schedule (benches/support/soak/ says which, and what
# is asserted). Three runs: PostgreSQL without faults (the baseline),
# PostgreSQL with every fault, SQLite with those that apply. Prints the
# faults and a table per run, then the runs side by side; exits non-zero
# when an assertion fails.
#
# It stops and starts the machine's PostgreSQL and Redis: run it alone.
# Both are started again (SOAK_PG_START, SOAK_REDIS_START, by default the
# machine's own commands) even when the run fails. It mounts small tmpfs
# filesystems for two instances' audit files (root; without it that fault
# is skipped, and with TOKENGATE_REQUIRE_SERVICES=1 that fails the run).
#
# Usage: DURATION=60s benches/soak.sh      # the short run (.ci/run's)
#        DURATION=10m benches/soak.sh      # the long one (RELIABILITY.md)
#        SOAK_RUNS=postgres DURATION=2m benches/soak.sh   # one run only
set -euo pipefail
cd "$(dirname "$0")/.."

export DURATION=${DURATION:-60s}
PG_START=${SOAK_PG_START:-"pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"}
REDIS_START=${SOAK_REDIS_START:-"redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"}
export SOAK_PG_START=$PG_START SOAK_REDIS_START=$REDIS_START

cleanup() {
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || sh -c "$REDIS_START" || true
  pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 || sh -c "$PG_START" || true
  # The driver unmounts its audit disks; this is for a driver killed mid-run.
  for mounted in $(awk '$2 ~ /tokengate-soak-/ { print $2 }' /proc/mounts); do
    umount -l "$mounted" || true
  done
}
trap cleanup EXIT

# The bench profile (release, with line tables) over the whole workspace's
# features: after `cargo bench --no-run` (as .ci/run does first) this
# reuses that build instead of compiling everything again.
cargo build --locked -q --profile bench --workspace --bin axum-notes --bin tokengate --example soak
target/release/examples/soak
