#!/usr/bin/env bash
# The regression guard on instructions per request: fails when the full
# Gate (JSON-lines audit file) executes more than 5 % over the count
# recorded in benches/instructions-baseline.txt, the token's HMAC left out.
# Under valgrind SHA-256 runs in software (valgrind hides SHA-NI), so the
# HMAC counts several thousand instructions that hardware with SHA-NI
# never runs: it is measured alone (stack `hmac`) and subtracted, so the
# guard tracks the code's own cost; both figures are printed. Callgrind counts are
# deterministic for one toolchain and one Cargo.lock, so the guard needs no
# noise margin beyond what a real change costs; a change that makes the gate
# cheaper should lower the recorded number in the same commit (the guard
# says so when the count falls more than 5 % under it).
#
# Needs valgrind (`apt-get install valgrind`). Usage: benches/instructions-guard.sh
# UPDATE=1 records the current count instead of checking it.
set -euo pipefail
cd "$(dirname "$0")/.."
baseline_file=benches/instructions-baseline.txt
out=$(STACKS="bare hmac gate" benches/instructions.sh 1000)
echo "$out"
total=$(awk '$1 == "gate:" { print $2 }' <<<"$out")
bare=$(awk '$1 == "bare:" { print $2 }' <<<"$out")
hmac=$(awk '$1 == "hmac:" { print $2 }' <<<"$out")
[ -n "$total" ] && [ -n "$bare" ] && [ -n "$hmac" ] || { echo "instructions-guard: no count measured" >&2; exit 1; }
# What the gate's own code executes: the whole gate less the HMAC.
gate=$(( total - hmac ))
if [ "${UPDATE:-0}" = 1 ]; then
  printf '# instructions per request of the full Gate less its HMAC (benches/instructions-guard.sh, N=1000), %s\ngate %s\nhmac %s\nbare %s\n' \
    "$(rustc --version)" "$gate" "$hmac" "$bare" >"$baseline_file"
  echo "instructions-guard: recorded gate $gate (HMAC $hmac apart, bare $bare) in $baseline_file"
  exit 0
fi
recorded=$(awk '$1 == "gate" { print $2 }' "$baseline_file")
limit=$(( recorded * 105 / 100 ))
floor=$(( recorded * 95 / 100 ))
echo "instructions-guard: gate $gate per request without its HMAC ($total with it; the HMAC alone $hmac, software SHA-256 under valgrind), recorded $recorded, limit $limit (bare $bare)"
if [ "$gate" -gt "$limit" ]; then
  echo "instructions-guard: FAILED: the gate grew more than 5 % ($gate > $limit)." >&2
  echo "  Find the cause (benches/instructions.sh per stack), or, if the cost is wanted," >&2
  echo "  record it with UPDATE=1 benches/instructions-guard.sh and say why in the commit." >&2
  exit 1
fi
if [ "$gate" -lt "$floor" ]; then
  echo "instructions-guard: the gate got cheaper ($gate < $floor): record it with UPDATE=1 so the guard keeps the gain."
fi
