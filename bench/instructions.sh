#!/usr/bin/env bash
# Instructions redis-server executes per decision of patternd's hot batch scripts, counted by
# valgrind's callgrind. Unlike the CPU figures of `just bench` (which move by ±20% between runs
# on a shared machine), the count is the same for the same work whatever else the machine
# does, so a change of a few percent in a script shows. User space only: a command's socket
# I/O in the kernel is not counted, so compare scripts with scripts, and before with after;
# the naive script and GET lines are for scale, not floors (docs/performance.md, third round).
#
# Usage: bench/instructions.sh [PATTERND] [REDIS_SERVER]
#   PATTERND      the patternd binary whose scripts are measured (its `compile` prints them);
#                 default: target/release/patternd under $CARGO_TARGET_DIR or ./target
#                 (a build with the cache hit batch, 9eed492 on, is measured by it; an older
#                 one by its read batch, which needs bed8c76 on, else the line shows n/a)
#   REDIS_SERVER  the redis-server to run under callgrind (default: the one on PATH). One
#                 built with symbols also gives a per-function profile of the dumps it leaves:
#                 `callgrind_annotate --inclusive=yes <dump>` (KEEP=1 keeps them).
# Needs valgrind, redis-cli and redis-benchmark. Takes about a minute.
set -euo pipefail

target_dir=${CARGO_TARGET_DIR:-target}
patternd=${1:-$target_dir/release/patternd}
redis_server=${2:-redis-server}
batches=${BATCHES:-1000}
per=14 # decisions per batch: what batches under load hold (docs/performance.md)
keyspace=2000

for tool in valgrind callgrind_control redis-cli redis-benchmark "$redis_server"; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool not found" >&2; exit 2; }
done
[ -x "$patternd" ] || { echo "instructions.sh: no patternd at $patternd (cargo build --release -p patternd)" >&2; exit 2; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "callgrind dumps kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$redis_server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
vg=$!
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.2
done
redis-cli -p "$port" ping >/dev/null || { cat "$work/redis.log" >&2; exit 1; }

# The scripts, as the engine sends them: each rule's batch variant.
cp "$(dirname "$0")/instructions.yaml" "$work/policy.yaml"
"$patternd" compile "$work/policy.yaml" >"$work/compiled.txt" 2>/dev/null
# The source of script "$1" from the `compile` output, as a file.
extract() {
  awk -v name="script $1 (" '
    index($0, name) == 1 { on = 1; next }
    on && (/^script / || /^==> /) { exit }
    on { print }
  ' "$work/compiled.txt" >"$work/$2.lua"
  [ -s "$work/$2.lua" ] || { echo "instructions.sh: no script '$1' in patternd compile's output" >&2; exit 1; }
  redis-cli -p "$port" script load "$(cat "$work/$2.lua")"
}
fw=$(extract "ratelimit i/fw batch" fw)
sw=$(extract "ratelimit i/sw batch" sw)
# A hit: the hit batch where the build has one (4th round on), else the read batch's hit path.
if grep -q '^script cache hit batch (' "$work/compiled.txt"; then
  hits=$(extract "cache hit batch" hits)
else
  hits=
  cache=$(extract "cache read batch" cache)
fi
naive=$(redis-cli -p "$port" script load \
  "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n")

# Cache values: fresh hits of 256 bytes, stored by the build's own `cache put` script, so
# they have the layout its read script expects (a day fresh, untagged, write: cache).
put=$(extract "cache put" put)
python3 - "$put" "$keyspace" <<'PY' | redis-cli -p "$port" --pipe >/dev/null
import sys
sha, n = sys.argv[1], int(sys.argv[2])
def resp(*args):
    out = [f"*{len(args)}\r\n"]
    for a in args:
        out.append(f"${len(a.encode())}\r\n{a}\r\n")
    return "".join(out)
body = "x" * 256
for i in range(n):
    id = f"{i:012d}"
    sys.stdout.write(resp("EVALSHA", sha, "3", f"v:{id}", "lease", "tags", "86400000", "0", "c",
                          "", id, "application/json", "s", "", "", "", "0", body))
    sys.stdout.write(resp("SET", f"g:{id}", body))
PY
[ "$(redis-cli -p "$port" exists v:000000000001)" = 1 ] || { echo "instructions.sh: the cache put stored nothing" >&2; exit 1; }

# Instructions per decision of `redis-benchmark … <command>` run $1 times, $2 decisions each.
measure() {
  local runs=$1 each=$2
  shift 2
  redis-benchmark -p "$port" -c 1 -r "$keyspace" -n $((runs / 4 + 1)) -q "$@" >/dev/null
  callgrind_control -d "$vg" >/dev/null 2>&1
  redis-benchmark -p "$port" -c 1 -r "$keyspace" -n "$runs" -q "$@" >/dev/null
  callgrind_control -d "$vg" >/dev/null 2>&1
  local dump total
  dump=$(ls -t "$work"/cg.out.* 2>/dev/null | head -1)
  total=$([ -n "$dump" ] && awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  if [ -z "$total" ]; then
    echo "instructions.sh: callgrind left no dump to read in $work" >&2
    kill "$$"
  fi
  echo $((total / (runs * each)))
}

keys() { # $1 prefix, $2 per-decision suffix
  for i in $(seq 1 "$per"); do printf '%s:__rand_int__%s ' "$1" "$2"; done
}
costs=$(for i in $(seq 1 "$per"); do printf '1 '; done)
# The hit batch: a value key and an XFetch gap per read.
hit_keys=$(for i in $(seq 1 "$per"); do printf 'v:__rand_int__ '; done)
hit_args=$(for i in $(seq 1 "$per"); do printf '0.69 '; done)
# The cache read's batch: n, one shape (3 keys, 4 arguments), then per read its arguments.
cache_keys=$(for i in $(seq 1 "$per"); do printf 'v:__rand_int__ lease%s tags ' "$i"; done)
cache_args="$per 3 4 $(for i in $(seq 1 "$per"); do printf 'body 0.69 token-%016d 5000:0:0:0 ' "$i"; done)"

# One line: what `measure` counts, or why not (a script that answers an error would count
# only its failure: the batch contract of the build measured differs from this script's).
row() {
  local name=$1 runs=$2 each=$3
  shift 3
  local probe
  probe=$(redis-cli -p "$port" "${@//__rand_int__/000000000001}" 2>&1 | head -1 | tr -d '\0')
  if [[ $probe == *ERR* ]]; then
    printf '  %-44s %8s  (%s)\n' "$name" "n/a" "$probe"
  else
    printf '  %-44s %8s\n' "$name" "$(measure "$runs" "$each" "$@")"
  fi
}

echo "instructions redis-server executes per decision (callgrind, user space; batches of $per, ids among $keyspace)"
# shellcheck disable=SC2046,SC2086 # the key and argument lists are meant to split
{
  row "fixed_window batch" "$batches" "$per" evalsha "$fw" "$per" $(keys f '') $costs
  row "sliding_window batch" "$batches" "$per" evalsha "$sw" "$per" $(keys s '') $costs
  if [ -n "$hits" ]; then
    row "cache hit (hit batch, 256-byte value)" "$batches" "$per" evalsha "$hits" "$per" $hit_keys $hit_args
  else
    row "cache hit (read batch, 256-byte value)" "$batches" "$per" evalsha "$cache" $((3 * per)) $cache_keys $cache_args
  fi
  row "for scale: naive INCR+PEXPIRE, per call" $((batches * per)) 1 evalsha "$naive" 1 n:__rand_int__ 60000
  row "for scale: GET of 256 bytes, per call" $((batches * per)) 1 get g:__rand_int__
}
