#!/usr/bin/env bash
# Instructions the engine executes per request, counted by valgrind's callgrind: GET /healthz
# (the HTTP floor), a fixed-window and a sliding-window decision, and a cache hit. Two tables:
# over one keep-alive connection, one request at a time (batches of one: every batch's cost
# falls on one decision), then the same from 32 connections at once (decisions and hits wait
# for Redis together and go out in batches of about 10, as under load). Like
# bench/instructions.sh for Redis, the count hardly moves from run to run, so a change of a few
# percent in the request path shows where `just bench`'s CPU figures (±10–20% on a shared
# machine) cannot. User space only: the kernel's share (socket reads and writes, wake-ups:
# about half of the engine's CPU under load) is not counted (docs/performance.md, fifth
# round).
#
# Usage: bench/engine-instructions.sh [PATTERND]
#   PATTERND  the patternd binary measured (default: target/release/patternd under
#             $CARGO_TARGET_DIR or ./target)
# Needs valgrind, redis-server and python3. Takes about a minute.
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

# The same requests from CONNS connections at once: decisions and hits then wait for Redis
# together and go out in batches, as under load, so a batch's cost is shared as it is there.
import asyncio

CONNS = 32

def head(method, path, body=b""):
    h = f"{method} {path} HTTP/1.1\r\nhost: x\r\n"
    if body:
        h += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return h.encode() + b"\r\n" + body

def request_of(name, i):
    if name.startswith("GET /healthz"):
        return head("GET", "/healthz")
    if name.startswith("cache hit"):
        return head("GET", f"/v1/cache/i/c/k{i % 200}")
    rule = "fw" if name.startswith("fixed") else "sw"
    return head("POST", f"/v1/ratelimit/i/{rule}", json.dumps({"id": f"u{i % 1000}"}).encode())

async def together(name, total):
    """Warm-up, then `total` requests between two dumps, over connections opened before
    both (their accept is not counted). Returns (requests, instructions, batches, calls)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNS)]
    async def one(rw, n, start):
        r, w = rw
        for i in range(start, start + n):
            w.write(request_of(name, i))
            await w.drain()
            lines = (await r.readuntil(b"\r\n\r\n")).split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length"))
            await r.readexactly(length)
            assert status == 200, (name, status)
    async def run(n):
        per = n // CONNS
        await asyncio.gather(*[one(rw, per, k * per) for k, rw in enumerate(conns)])
        return per * CONNS
    await run(total // 4)
    b0, c0 = await asyncio.to_thread(batches)
    await asyncio.to_thread(dump)
    n = await run(total)
    instructions = await asyncio.to_thread(dump)
    b1, c1 = await asyncio.to_thread(batches)
    for _, w in conns:
        w.close()
    return n, instructions, b1 - b0, c1 - c0

def batches():
    _, text = call("GET", "/metrics")
    found = {}
    for line in text.decode().splitlines():
        for k in ("patternd_redis_batches_total", "patternd_redis_batched_calls_total"):
            if line.startswith(k + " "):
                found[k] = float(line.split()[1])
    return found.get("patternd_redis_batches_total", 0), found.get("patternd_redis_batched_calls_total", 0)

floor = None
print(f"the same from {CONNS} connections at once ({requests} requests each; decisions and hits "
      f"batched as under load)")
for name, _, _ in phases:
    n, total, b, c = asyncio.run(together(name, requests))
    per = total // n
    floor = floor or per
    ratio = "" if per == floor else f"   {per / floor:.2f}× the HTTP floor"
    size = f"   batches of {c / b:.1f}" if b > 0 else ""
    print(f"  {name:<34} {per:>8}{ratio}{size}")
PY
