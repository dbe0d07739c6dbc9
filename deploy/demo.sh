#!/usr/bin/env bash
# `make demo`: sends sample profiles and events to a running `make run`
# and shows the messages they caused.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.venv/bin
api=http://127.0.0.1:${REACH_API_PORT:-8080}
curl -fsS "$api/healthz" >/dev/null || { echo "reach is not running: start it with 'make run' first"; exit 1; }

run_id=$(date +%s)
# The API wants a credential: a key that may read inboxes, revoked when the demo ends.
made=$("$bin/reach" keys create "demo-$run_id" --scope inbox:read --json)
key_id=$(echo "$made" | "$bin/python" -c 'import json, sys; print(json.load(sys.stdin)["key_id"])')
token=$(echo "$made" | "$bin/python" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
trap '"$bin/reach" keys revoke "$key_id" >/dev/null' EXIT
sed "s/@RUN@/$run_id/g" "$root/deploy/examples/profiles.jsonl" | "$bin/reach" profiles send
sleep 1  # profiles first, so the events' rules see the users' segments
sed -e "s/@RUN@/$run_id/g" -e "s/@TS@/$(date +%s000)/g" "$root/deploy/examples/events.jsonl" \
  | "$bin/reach" events send

echo "waiting for the messages..."
for user in ada bob; do
  uid="demo-$run_id-$user"
  for _ in $(seq 1 50); do
    body=$(curl -fsS -H "authorization: Bearer $token" "$api/v1/users/$uid/inbox")
    [[ "$body" == *'"items":[]'* ]] || break
    sleep 0.2
  done
  echo "inbox of $uid:"
  echo "$body" | "$bin/python" -m json.tool
done
echo "emails received by the local SMTP sink (var/smtp.log):"
grep -E '^(Subject|To):' "$root/var/smtp.log" | tail -n 6 || echo "(none yet)"
