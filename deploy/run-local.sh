#!/usr/bin/env bash
# Runs the reach pipeline on the local stack (`make run`): a local SMTP sink,
# the worker and the HTTP API, until Ctrl-C. Expects `deploy/stack.sh up`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$root/.venv/bin
var=$root/var
mkdir -p "$var"

export REACH_API_PORT=${REACH_API_PORT:-8080}
export REACH_WORKER_METRICS_PORT=${REACH_WORKER_METRICS_PORT:-9464}
export REACH_SMTP_PORT=${REACH_SMTP_PORT:-2525}
export REACH_EXPORTER_PORT=${REACH_EXPORTER_PORT:-9465}

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping reach..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

"$bin/reach" db migrate
"$bin/reach" topics create
"$bin/reach" rules validate "${REACH_RULES_DIR:-$root/rules/examples}"

# A local SMTP server that accepts every mail and prints it to var/smtp.log,
# standing in for a real mail relay.
"$bin/python" -m aiosmtpd -n -c aiosmtpd.handlers.Debugging -l "127.0.0.1:$REACH_SMTP_PORT" \
  >"$var/smtp.log" 2>&1 &
pids+=($!)
# tee through a process substitution, so $! is the worker's PID (with a pipe it was tee's,
# and stopping a backgrounded make run left the worker running).
"$bin/reach" worker > >(tee "$var/worker.log") 2>&1 &
pids+=($!)
"$bin/reach" api >"$var/api.log" 2>&1 &
pids+=($!)
"$bin/reach" exporter >"$var/exporter.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$REACH_API_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

cat <<MSG

  reach is running on the local stack.
    HTTP API         http://127.0.0.1:$REACH_API_PORT   (OpenAPI: /docs, /openapi.json)
    API metrics      http://127.0.0.1:$REACH_API_PORT/metrics
    worker metrics   http://127.0.0.1:$REACH_WORKER_METRICS_PORT/metrics
    consumer lag     http://127.0.0.1:$REACH_EXPORTER_PORT/metrics   (reach exporter)
    alerts           make observe, then http://127.0.0.1:9090/alerts
    rules            ${REACH_RULES_DIR:-$root/rules/examples}  (edit a file: it reloads)
    sent email       $var/smtp.log
    logs             $var/worker.log, $var/api.log

  Try it, in another terminal:
    make demo
  or make an API key and send one event yourself:
    .venv/bin/reach keys create me --scope events:write --scope inbox:read   # prints rk_...
    curl -s -XPOST localhost:$REACH_API_PORT/v1/events -H "authorization: Bearer \$TOKEN" \\
      -H 'content-type: application/json' \\
      -d '{"event_id":"e-1","user_id":"u-1","name":"signup","ts":$(date +%s000),"properties":{"first_name":"Ada"}}'
    curl -s -H "authorization: Bearer \$TOKEN" localhost:$REACH_API_PORT/v1/users/u-1/inbox

  Ctrl-C stops reach (the stack keeps running; \`make down\` stops it).
MSG
wait -n "${pids[@]}"
