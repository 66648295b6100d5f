#!/usr/bin/env bash
# A curl session against a running `cargo run -p patternd -- serve` (the example policies).
# Run it from another shell: bash examples/walkthrough.sh
set -u
P=${PATTERND:-http://127.0.0.1:8080}
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say "login: 5 per minute and 20 per hour, checked together; the 6th call is denied"
for i in 1 2 3 4 5 6; do
  curl -s -o /dev/null -w "%{http_code} " -X POST "$P/v1/ratelimit/shop/login" -d '{"id":"alice"}'
done
echo
curl -s -i -X POST "$P/v1/ratelimit/shop/login" -d '{"id":"alice"}'

say "forward auth: the id is the address the gateway saw (the rightmost of X-Forwarded-For)"
curl -s -i "$P/v1/ratelimit/shop/edge" -H 'X-Forwarded-For: forged-by-the-client, 203.0.113.7'

say "concurrency: take a lease, then give it back"
lease=$(curl -s -X POST "$P/v1/ratelimit/shop/jobs" -d '{"id":"worker-1"}' | sed -E 's/.*"lease":"([^"]+)".*/\1/')
echo "lease: $lease"
curl -s -X DELETE "$P/v1/ratelimit/shop/jobs/leases/$lease"; echo

say "bad input is a problem+json 4xx"
curl -s -X POST "$P/v1/ratelimit/shop/login" -d '{"id":"alice","cost":-2}'; echo
curl -s -X POST "$P/v1/ratelimit/shop/nope" -d '{"id":"alice"}'; echo

say "what is loaded (admin, loopback only without a token)"
curl -s "$P/admin/policies" | head -c 400; echo
