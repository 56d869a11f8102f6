#!/usr/bin/env bash
# The admin API as its users' tools see it: axum-notes --admin on a
# throwaway SQLite database, its served OpenAPI document checked with
# openapi-spec-validator, then schemathesis with every check against the
# real server. Any finding fails the run.
#
# The fuzzer gets a delegated admin token (tokengate:delegate with the
# notes scopes): a root token (tokengate:admin) handed to a fuzzer
# revokes, disables or rotates itself within seconds and the rest of the
# run only sees 401s. Bounded: a fixed seed, 60 examples per operation,
# 40 requests a second (under the Gate's default per-token quota, so the
# run never locks itself out), ten minutes at most.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0

if ! command -v schemathesis >/dev/null 2>&1 || ! command -v openapi-spec-validator >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check \
    "schemathesis==${SCHEMATHESIS_VERSION}" "openapi-spec-validator==${VALIDATOR_VERSION}"
fi

cargo build --locked -q -p axum-notes -p tokengate-cli
bin=target/debug
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/axum-notes" --admin --listen "127.0.0.1:$port" --db "$work/tokens.db" \
  --audit-log "$work/audit.jsonl" >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 1 100); do
  grep -q "listening on" "$work/server.log" && break
  sleep 0.1
done
token=$("$bin/tokengate" --db "$work/tokens.db" issue --name fuzzer --subject ci \
  --scope tokengate:delegate --scope notes:read --scope notes:write --audience notes --ttl 1h 2>/dev/null)
url="http://127.0.0.1:$port/admin/openapi.json"

curl -sf -H "Authorization: Bearer $token" "$url" >"$work/openapi.json"
openapi-spec-validator "$work/openapi.json"

timeout 600 schemathesis run "$url" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-examples 60 \
  --seed 1 \
  --rate-limit 40/s \
  --request-timeout 10 \
  --no-color
echo "admin API: the document is valid OpenAPI, and schemathesis found nothing"
