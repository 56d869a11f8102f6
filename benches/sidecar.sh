#!/usr/bin/env bash
# tokengate serve behind nginx, on loopback, under wrk: requests per second
# and latency through nginx with auth_request to tokengate serve
# (examples/sidecar/nginx.conf, as shipped but for its ports), beside the
# same nginx proxying straight to the same upstream, alternating in each
# round. The upstream is an nginx server answering 200 itself, so what is
# measured is the proxying and the check. Both runs send the same token.
#
# Bounded: ROUNDS rounds of DURATION per run. Needs nginx and wrk
# (Debian: apt-get install nginx wrk). Usage:
#   ROUNDS=3 DURATION=5s CONNS=32 benches/sidecar.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
for tool in nginx wrk; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || { echo "needs $tool (apt-get install $tool)"; exit 2; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build -q --release -p tokengate-cli
BIN=$PWD/target/release/tokengate
WORK=$(mktemp -d)
cleanup() {
  [ -n "${SERVE_PID:-}" ] && kill "$SERVE_PID" 2>/dev/null || true
  [ -f "$WORK/nginx/nginx.pid" ] && kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
  sleep 0.2
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SERVE_PORT=$(free_port); AUTH_PORT=$(free_port); PLAIN_PORT=$(free_port); UP_PORT=$(free_port)

# The shipped policy, its quotas out of the way of the load.
sed -e 's/{ rate = "100\/s", burst = 200 }/{ rate = "1000000\/s", burst = 1000000 }/' \
    -e 's/{ rate = "50\/s", burst = 100 }/{ rate = "1000000\/s", burst = 1000000 }/' \
    examples/sidecar/notes.toml >"$WORK/notes.toml"
"$BIN" --db "$WORK/tokens.db" init >/dev/null
TOKEN=$("$BIN" --db "$WORK/tokens.db" issue --name bench --subject bench --scope notes:read --audience notes 2>/dev/null)
"$BIN" --db "$WORK/tokens.db" serve --config "$WORK/notes.toml" --listen "127.0.0.1:$SERVE_PORT" \
  --audit-log "$WORK/audit.jsonl" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!

mkdir -p "$WORK/nginx/tmp"
sed -e "s/127.0.0.1:8080/127.0.0.1:$AUTH_PORT/" -e "s/127.0.0.1:8181/127.0.0.1:$SERVE_PORT/" \
    -e "s/127.0.0.1:3000/127.0.0.1:$UP_PORT/" examples/sidecar/nginx.conf >"$WORK/nginx/sidecar.conf"
cat >"$WORK/nginx/nginx.conf" <<CONF
daemon on;
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    include sidecar.conf;
    # The baseline: the same upstream, no check.
    server {
        listen 127.0.0.1:$PLAIN_PORT;
        location / { proxy_pass http://notes_app; }
    }
    # The upstream both reach.
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "ok\n"; }
    }
}
CONF
[ "$(id -u)" = 0 ] && sed -i 's/^daemon on;/daemon on;\nuser root;/' "$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c nginx.conf

for _ in $(seq 100); do
  curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$AUTH_PORT/notes" && break
  sleep 0.1
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$AUTH_PORT/notes")
refused=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AUTH_PORT/notes")
[ "$status" = 200 ] && [ "$refused" = 401 ] || { echo "the setup answers $status with a token and $refused without"; cat "$WORK/serve.log"; exit 1; }

# wrk's summary: requests per second and the 50th and 99th percentiles.
run() {
  wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/notes" |
    awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF}
         END {printf "%.0f %s %s %s\n", rps, p50, p99, (bad==""?0:bad)}'
}

printf '%-6s %-34s %10s %9s %9s %7s\n' round mode req/s p50 p99 ratio
for round in $(seq "$ROUNDS"); do
  read -r plain_rps plain_p50 plain_p99 plain_bad < <(run "$PLAIN_PORT")
  read -r auth_rps auth_p50 auth_p99 auth_bad < <(run "$AUTH_PORT")
  [ "$plain_bad" = 0 ] && [ "$auth_bad" = 0 ] || { echo "non-2xx answers: $plain_bad straight, $auth_bad checked"; exit 1; }
  printf '%-6s %-34s %10s %9s %9s %7s\n' "$round" "nginx -> upstream" "$plain_rps" "$plain_p50" "$plain_p99" 1.00
  printf '%-6s %-34s %10s %9s %9s %7.2f\n' "$round" "nginx + tokengate serve -> upstream" "$auth_rps" "$auth_p50" "$auth_p99" \
    "$(echo "$auth_rps / $plain_rps" | bc -l)"
done
echo "audit records written: $(wc -l <"$WORK/audit.jsonl")"
