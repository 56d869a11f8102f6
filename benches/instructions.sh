#!/usr/bin/env bash
# Instructions per request under callgrind, for each stack: the difference
# between runs of 2N and N requests, divided by N, so setup cancels out.
# Only the request path is counted (the audit writer thread is not).
# Needs valgrind (`apt-get install valgrind`). Usage: benches/instructions.sh [N]
# STACKS="bare gate" limits the run to those stacks. The stack `writer`
# counts the other side of `gate`: the audit file's writer thread, per
# record (inside `Writer::write_record`: the record's fields, the JSON
# line, the hash chain's SHA-256; the file's buffered writes apart).
# First it prints the full Gate's future and response sizes, and fails when
# either passes its bound.
#
# COLD=1 evicts the caches before each request (the eviction is not
# counted) and runs callgrind's cache model (L1 I and D 32 KiB, last level
# 512 KiB as this machine's L2): it prints the cache lines of code and of
# data each request misses beside its instructions.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
cargo bench --locked --workspace --bench instructions --no-run 2>/dev/null
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/instructions-* | grep -v '\.d$' | head -n 1)
# The full Gate's response future and response stay within their bounds
# (exit 1 otherwise): every admitted request moves them.
"$bin" footprint
if [ "${COLD:-0}" = 1 ]; then
  # Events: Ir, then (cache model) misses I1mr D1mr D1mw.
  count() {
    local out; out=$(mktemp)
    COLD=1 valgrind --tool=callgrind --callgrind-out-file="$out" --cache-sim=yes \
      --I1=32768,8,64 --D1=32768,8,64 --LL=524288,8,64 \
      --toggle-collect='*drive*' --toggle-collect='*evict*' "$bin" "$1" "$2" >/dev/null 2>&1
    awk '/^summary:/ { print $2, $5, $6, $7 }' "$out"; rm -f "$out"
  }
else
  count() {
    local stack=$1 toggle='*drive*'
    if [ "$stack" = writer ]; then stack=gate toggle='*Writer*write_record*'; fi
    valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect="$toggle" "$bin" "$stack" "$2" 2>&1 \
      | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
  }
fi
read -r -a stacks <<<"${STACKS:-bare client-ip audit rate-ip authenticate rate-token scope gate-discard gate}"
for stack in "${stacks[@]}"; do
  read -r -a small <<<"$(count "$stack" "$n")"
  read -r -a large <<<"$(count "$stack" $((2 * n)))"
  per() { echo $(( (large[$1] - small[$1]) / n )); }
  if [ "${COLD:-0}" = 1 ]; then
    echo "$stack: $(per 0) instructions, lines missed: $(per 1) code, $(per 2) data read, $(per 3) data written per request"
  else
    if [ "$stack" = writer ]; then
      echo "writer: $(per 0) instructions per record (the audit file's writer thread)"
    else
      echo "$stack: $(per 0) instructions per request"
    fi
  fi
done
