#!/usr/bin/env bash
# Register a ModelGates job with the relay, read the registration back, list
# its delivery attempts and delete it, with curl and jq.
#
#   RELAY_URL=http://127.0.0.1:8000 RELAY_API_KEY=... docs/examples/client.sh
#
# RELAY_JOB_ID sets the job ID. The default is a script that the simulator
# of `relay dev` runs. The webhook goes to a receiver on 127.0.0.1:9000.
set -euo pipefail

if [[ -z "${RELAY_URL:-}" || -z "${RELAY_API_KEY:-}" ]]; then
  echo "set RELAY_URL and RELAY_API_KEY first" >&2
  exit 2
fi
job_id="${RELAY_JOB_ID:-sim.pending*2.in_progress.completed}"
callback_url="http://127.0.0.1:9000/webhooks"

# Send one request and print the response body. The body of a 4xx or 5xx
# response is problem+json, so print its detail and fail. curl reports a
# failed connection itself.
relay() {
  local body
  if ! body=$(curl -sS --fail-with-body \
    -H "Authorization: Bearer $RELAY_API_KEY" "$@"); then
    if [[ -n "$body" ]]; then
      echo "request failed: $(jq -r .detail <<<"$body" 2>/dev/null || echo "$body")" >&2
    fi
    return 1
  fi
  printf '%s' "$body"
}

request=$(jq -n --arg job_id "$job_id" --arg callback_url "$callback_url" \
  '{job_id: $job_id, callback_url: $callback_url, metadata: {order: 42}}')
registration=$(relay -X POST "$RELAY_URL/v1/registrations" \
  -H 'Content-Type: application/json' -d "$request")
id=$(jq -r .id <<<"$registration")
echo "registered $id (state $(jq -r .state <<<"$registration"))"

registration=$(relay "$RELAY_URL/v1/registrations/$id")
echo "read $id: state $(jq -r .state <<<"$registration"), $(jq -r .upstream.polls <<<"$registration") polls"

attempts=$(relay "$RELAY_URL/v1/registrations/$id/attempts")
echo "attempts: $(jq '.attempts | length' <<<"$attempts")"

relay -X DELETE "$RELAY_URL/v1/registrations/$id" >/dev/null
echo "deleted $id"
