#!/bin/bash
# After the new version starts, check that it answers /health/ready: the app can use its
# database and the schema has every migration this code ships (503 otherwise). The load
# balancer keeps checking /health, which never touches the database. A failure here marks the
# deployment as failed in Beanstalk's events instead of leaving a broken version serving.
#
# First, the port: Beanstalk points its own `location /` at PORT, but not the `/api/` location
# in .platform/nginx, which names the port itself; if they differ, /api/ would answer 502.
set -euo pipefail

GET_CONFIG="${EB_GET_CONFIG:-/opt/elasticbeanstalk/bin/get-config}"
port=$("$GET_CONFIG" environment -k PORT 2>/dev/null || echo 8000)
url="http://127.0.0.1:${port}/health/ready"
log() { echo "smoke-check: $*" >&2; }

# This script runs from hooks/ and, through exec, from confighooks/: resolve its real location.
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]:-$0}")")
nginx_conf=$(readlink -f "$here/../../nginx/conf.d/elasticbeanstalk/01_api.conf" || true)
if [ -n "$nginx_conf" ] && [ -f "$nginx_conf" ]; then
  # The port of the first proxy_pass inside `location /api/ { ... }`.
  api_port=$(awk '
    /^[[:space:]]*location[[:space:]]+\/api\/[[:space:]]*\{/ { inside = 1; next }
    inside && /}/ { inside = 0 }
    inside && $1 == "proxy_pass" {
      u = $2; sub(/;.*/, "", u); sub(/^[a-z]+:\/\//, "", u); sub(/\/.*/, "", u)
      n = split(u, part, ":"); if (n > 1 && part[n] ~ /^[0-9]+$/) print part[n]; exit
    }' "$nginx_conf")
  if [ -z "$api_port" ]; then
    log "ERROR: no proxy_pass with a port in the location /api/ of $nginx_conf;"
    log "cannot check it against PORT=$port"
    exit 1
  fi
  if [ "$api_port" != "$port" ]; then
    log "ERROR: PORT=$port but the location /api/ in $nginx_conf proxies to port $api_port:"
    log "Beanstalk moves its own location / with PORT, not /api/, which would answer 502."
    log "Change both or neither (PORT is 8000 on Beanstalk unless set)."
    exit 1
  fi
else
  echo "smoke-check: no nginx/conf.d/elasticbeanstalk/01_api.conf next to $here; no /api/ port to compare"
fi

seconds="${SMOKE_CHECK_SECONDS:-30}"
deadline=$((SECONDS + seconds))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
attempt=0
while :; do
  attempt=$((attempt + 1))
  # /health/ready may wait DB_CONNECT_TIMEOUT (5 s) for an unreachable database before its 503.
  status=$(curl -sS --max-time 10 -o "$work/body" -w '%{http_code}' "$url" 2>"$work/error") || true
  if [ "$status" = "200" ]; then
    echo "smoke-check: $url answered on attempt $attempt: $(head -c 2000 "$work/body")"
    exit 0
  fi
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 1
done
if [ "${status:-000}" = "000" ]; then
  last="no answer ($(head -c 500 "$work/error"))"
else
  last="HTTP $status $(head -c 2000 "$work/body" 2>/dev/null || true)"
fi
log "ERROR: $url did not answer 200 within $seconds s ($attempt attempts)."
log "Last answer: $last"
log "See web.stdout.log (the app's log) and eb-engine.log (the deployment) on the instance, or eb logs."
exit 1
