#!/usr/bin/env bash
# Instructions the engine executes per request, counted by valgrind's callgrind: GET /healthz
# (the HTTP floor), a fixed-window and a sliding-window decision, and a cache hit, over one
# keep-alive connection, one request at a time. Like bench/instructions.sh for Redis, the count
# hardly moves from run to run, so a change of a few percent in the request path shows where
# `just bench`'s CPU figures (±10–20% on a shared machine) cannot. User space only: the
# kernel's share (socket reads and writes, wake-ups: about 40% of the engine's CPU under load)
# is not counted, and one request at a time means batches of one (docs/performance.md, fourth
# round).
#
# Usage: bench/engine-instructions.sh [PATTERND]
#   PATTERND  the patternd binary measured (default: target/release/patternd under
#             $CARGO_TARGET_DIR or ./target)
# Needs valgrind, redis-server and python3. Takes about two minutes.
set -euo pipefail

target_dir=${CARGO_TARGET_DIR:-target}
patternd=${1:-$target_dir/release/patternd}
requests=${REQUESTS:-2000}

for tool in valgrind callgrind_control redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "engine-instructions.sh: $tool not found" >&2; exit 2; }
done
[ -x "$patternd" ] || { echo "engine-instructions.sh: no patternd at $patternd (cargo build --release -p patternd)" >&2; exit 2; }

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rport=$(free_port)
hport=$(free_port)
vg=
cleanup() {
  [ -n "$vg" ] && kill "$vg" 2>/dev/null
  redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "callgrind dumps kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
mkdir "$work/policies"
cp "$(dirname "$0")/instructions.yaml" "$work/policies/i.yaml"
# One worker thread: the same work lands on one thread whatever the scheduler does.
valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$work/cg.out" \
  "$patternd" serve --threads 1 --listen "127.0.0.1:$hport" --redis "redis://127.0.0.1:$rport" \
  --policies "$work/policies" >"$work/patternd.log" 2>&1 &
vg=$!

python3 - "$hport" "$requests" "$vg" "$work" <<'PY'
import glob, http.client, json, os, subprocess, sys, time

port, requests, vg, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/readyz")
        if c.getresponse().read() and True:
            break
    except OSError:
        if time.time() > deadline:
            sys.exit("engine-instructions.sh: patternd did not answer /readyz (see its log)")
        time.sleep(0.5)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

def call(method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return r.status, data

body = b"x" * 256
for i in range(200):
    s, _ = call("PUT", f"/v1/cache/i/c/k{i}", body, {"content-type": "application/octet-stream"})
    assert s == 204, s

phases = [
    ("GET /healthz (the HTTP floor)", lambda i: call("GET", "/healthz"), 200),
    ("fixed_window decision", lambda i: call("POST", "/v1/ratelimit/i/fw",
        json.dumps({"id": f"u{i % 1000}"}), {"content-type": "application/json"}), 200),
    ("sliding_window decision", lambda i: call("POST", "/v1/ratelimit/i/sw",
        json.dumps({"id": f"u{i % 1000}"}), {"content-type": "application/json"}), 200),
    ("cache hit (256-byte value)", lambda i: call("GET", f"/v1/cache/i/c/k{i % 200}"), 200),
]

def dump():
    subprocess.run(["callgrind_control", "-d", vg], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The dump is written asynchronously by the next instrumented code: wait for it.
    for _ in range(200):
        files = glob.glob(os.path.join(work, "cg.out.*"))
        if files:
            newest = max(files, key=os.path.getmtime)
            with open(newest) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        os.rename(newest, newest + ".read")
                        return int(line.split()[1])
        call("GET", "/healthz")
        time.sleep(0.05)
    sys.exit("engine-instructions.sh: callgrind left no dump")

floor = None
print(f"instructions patternd executes per request (callgrind, user space; one connection, "
      f"one request at a time, {requests} requests; --threads 1)")
for name, send, want in phases:
    for i in range(requests // 4):  # warm-up: connections, caches, allocator
        s, _ = send(i)
        assert s == want, (name, s)
    dump()
    for i in range(requests):
        s, _ = send(i)
        assert s == want, (name, s)
    per = dump() // requests
    floor = floor or per
    ratio = "" if per == floor else f"   {per / floor:.2f}× the HTTP floor"
    print(f"  {name:<34} {per:>8}{ratio}")
PY
