#!/usr/bin/env bash
# Instructions per request under callgrind, for each stack: the difference
# between runs of 2N and N requests, divided by N, so setup cancels out.
# Only the request path is counted (the audit writer thread is not).
# Needs valgrind (`apt-get install valgrind`). Usage: benches/instructions.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
cargo bench --bench instructions --no-run 2>/dev/null
bin=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -n 1)
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect='*drive*' "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for stack in bare client-ip audit rate-ip authenticate rate-token scope gate-discard gate; do
  small=$(count "$stack" "$n")
  large=$(count "$stack" $((2 * n)))
  echo "$stack: $(( (large - small) / n )) instructions per request"
done
