#!/bin/bash
# After the new version starts, check that it answers /health on the port nginx proxies to.
# A failure here marks the deployment as failed in Beanstalk's events instead of leaving a
# broken version to be found by the load balancer's health checks.
set -euo pipefail

GET_CONFIG="${EB_GET_CONFIG:-/opt/elasticbeanstalk/bin/get-config}"
port=$("$GET_CONFIG" environment -k PORT 2>/dev/null || echo 8000)
url="http://127.0.0.1:${port}/health"

seconds="${SMOKE_CHECK_SECONDS:-30}"
for attempt in $(seq 1 "$seconds"); do
  if body=$(curl -fsS --max-time 2 "$url" 2>/dev/null); then
    echo "smoke-check: $url answered on attempt $attempt: $body"
    exit 0
  fi
  sleep 1
done
echo "smoke-check: ERROR: $url did not answer 200 within $seconds s; see web.stdout.log" >&2
exit 1
