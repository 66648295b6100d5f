//! The WASI p2 shim: the slice of WASI a Rust guest's standard library imports, written as
//! host functions, and nothing that reaches out.
//!
//! A guest built for `wasm32-wasip2` imports WASI through std even when it never uses it:
//! stdout and stderr (`print!`, the panic message), clocks, random numbers (HashMap's
//! `RandomState`), the environment. Here stdout and stderr go to the host (patternd's log, see
//! [`GuestOutput`]), the environment and arguments are empty, there are no preopened
//! directories, clocks and random numbers work; everything else WASI offers (opening files,
//! sockets, stdin, sleeping, exit) traps when called.
//!
//! Why not wasmtime-wasi: its synchronous bindings run every stream operation (even writing to
//! a discarded stdout, or dropping the stream) through `Handle::block_on` on the current tokio
//! runtime, which panics on a tokio worker thread — where plugin hooks run. A guest that prints
//! or panics (Rust's panic handler writes to stderr) would then take the request task down with
//! a host panic instead of failing one call. Its asynchronous bindings would need async wasmtime
//! and an executor per call. The handful of functions below are what a guest's standard library
//! actually calls; the rest of WASI is defined as traps.
//!
//! The guest's random numbers come from the OS generator (getrandom), and a failure traps the
//! call: this is the guest's own randomness, not a token patternd issues (those are drawn in
//! `crate::patterns::random`, with the same policy: no entropy, no value).

use std::sync::OnceLock;
use std::time::Instant;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, Resource, ResourceType, Val};
use wasmtime::{Engine, StoreContextMut};

/// Where a guest's stdout and stderr go: the per-store state of the host implements it.
pub(super) trait GuestOutput {
    /// `stream` is [`STDOUT`] or [`STDERR`]; `bytes` is one write, not necessarily a line.
    fn guest_output(&mut self, stream: u32, bytes: &[u8]);
}

/// Host side of `wasi:io/streams.output-stream`; the rep says which stream.
struct OutputStream;
/// Host side of `wasi:io/poll.pollable`: an output stream's readiness, which is always ready.
struct Pollable;
/// Host side of `wasi:io/error.error`; never created.
struct IoError;
pub(super) const STDOUT: u32 = 1;
pub(super) const STDERR: u32 = 2;

/// Bytes `check-write` grants at a time (a guest writes at most this much per call).
const STREAM_WRITE_CHUNK: u64 = 4096;
/// Largest `get-random-bytes` request served (a guest asking for more traps).
const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Defines the WASI functions patternd provides for the instances `component` imports, then
/// every other WASI import as a trap. A non-WASI import other than the `contract`'s interfaces
/// refuses the load.
pub(super) fn link_wasi<T: GuestOutput + 'static>(
    linker: &mut Linker<T>,
    engine: &Engine,
    component: &Component,
    contract: &[&str],
) -> Result<(), String> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let (iface, _version) = name.split_once('@').unwrap_or((name, ""));
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            return Err(format!(
                "imports `{name}`, which is not an interface; patternd provides patternd:plugin@0.1.0 and part of WASI p2"
            ));
        }
        if contract.contains(&name) {
            continue;
        }
        if !iface.starts_with("wasi:") {
            return Err(format!(
                "imports `{name}`, which patternd does not provide (it provides patternd:plugin@0.1.0 and part of WASI p2; was the plugin built against another version of the contract?)"
            ));
        }
        let mut inst = linker.instance(name).map_err(|e| format!("{e:#}"))?;
        // `output-stream`, `pollable` and `error` are ours wherever they appear (wasi:io defines them;
        // stdout, stderr, clocks and filesystem re-export them): every mention must be the same
        // resource type.
        if let ComponentItem::ComponentInstance(ci) = &item.ty {
            for (export, t) in ci.exports(engine) {
                let ty = match export {
                    "output-stream" => ResourceType::host::<OutputStream>(),
                    "pollable" => ResourceType::host::<Pollable>(),
                    "error" => ResourceType::host::<IoError>(),
                    _ => continue,
                };
                if matches!(t.ty, ComponentItem::Resource(_)) {
                    inst.resource(export, ty, |_, _| Ok(()))
                        .map_err(|e| format!("{e:#}"))?;
                }
            }
        }
        let r = match iface {
            "wasi:cli/environment" => {
                // No environment, no arguments, no working directory: nothing ambient.
                inst.func_wrap("get-environment", |_, (): ()| {
                    Ok((Vec::<(String, String)>::new(),))
                })
                .and_then(|()| {
                    inst.func_wrap("get-arguments", |_, (): ()| Ok((Vec::<String>::new(),)))
                })
                .and_then(|()| inst.func_wrap("initial-cwd", |_, (): ()| Ok((None::<String>,))))
            }
            "wasi:cli/exit" => {
                for f in ["exit", "exit-with-code"] {
                    inst.func_new(f, |_, _, _, _| wasmtime::bail!("the plugin called exit"))
                        .map_err(|e| format!("{e:#}"))?;
                }
                Ok(())
            }
            "wasi:cli/stdout" => inst.func_wrap("get-stdout", |_, (): ()| {
                Ok((Resource::<OutputStream>::new_own(STDOUT),))
            }),
            "wasi:cli/stderr" => inst.func_wrap("get-stderr", |_, (): ()| {
                Ok((Resource::<OutputStream>::new_own(STDERR),))
            }),
            // Not a terminal: std then never asks for terminal features.
            "wasi:cli/terminal-stdin" | "wasi:cli/terminal-stdout" | "wasi:cli/terminal-stderr" => {
                let f = format!("get-{}", &iface["wasi:cli/".len()..]);
                inst.func_new(&f, |_, _, _, results| {
                    set_result(results, Val::Option(None))
                })
            }
            "wasi:io/streams" => link_output_stream(&mut inst),
            "wasi:io/poll" => link_poll(&mut inst),
            // No preopened directories: a guest's file operations fail with "not found"
            // instead of trapping, and can reach nothing.
            "wasi:filesystem/preopens" => inst.func_new("get-directories", |_, _, _, results| {
                set_result(results, Val::List(Vec::new()))
            }),
            "wasi:clocks/wall-clock" => inst
                .func_new("now", |_, _, _, results| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    set_result(results, datetime(now.as_secs(), now.subsec_nanos()))
                })
                .and_then(|()| {
                    inst.func_new("resolution", |_, _, _, results| {
                        set_result(results, datetime(0, 1))
                    })
                }),
            "wasi:clocks/monotonic-clock" => inst
                .func_wrap("now", |_, (): ()| Ok((monotonic_ns(),)))
                .and_then(|()| inst.func_wrap("resolution", |_, (): ()| Ok((1u64,)))),
            // HashMap's RandomState seeds itself from here; getrandom is the OS generator.
            "wasi:random/random" | "wasi:random/insecure" => {
                let (bytes, u64_fn) = if iface == "wasi:random/random" {
                    ("get-random-bytes", "get-random-u64")
                } else {
                    ("get-insecure-random-bytes", "get-insecure-random-u64")
                };
                inst.func_wrap(bytes, |_, (len,): (u64,)| {
                    if len > MAX_RANDOM_BYTES {
                        wasmtime::bail!(
                            "asked for {len} random bytes (at most {MAX_RANDOM_BYTES})"
                        );
                    }
                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                    getrandom::fill(&mut buf)
                        .map_err(|e| wasmtime::format_err!("no randomness: {e}"))?;
                    Ok((buf,))
                })
                .and_then(|()| inst.func_wrap(u64_fn, |_, (): ()| Ok((random_u64()?,))))
            }
            "wasi:random/insecure-seed" => inst.func_wrap("insecure-seed", |_, (): ()| {
                Ok(((random_u64()?, random_u64()?),))
            }),
            _ => Ok(()),
        };
        r.map_err(|e| format!("{e:#}"))?;
    }
    linker
        .define_unknown_imports_as_traps(component)
        .map_err(|e| format!("{e:#}"))
}

fn set_result(results: &mut [Val], v: Val) -> wasmtime::Result<()> {
    match results.first_mut() {
        Some(slot) => {
            *slot = v;
            Ok(())
        }
        None => wasmtime::bail!("host function called with no result slot"),
    }
}

fn datetime(seconds: u64, nanoseconds: u32) -> Val {
    Val::Record(vec![
        ("seconds".into(), Val::U64(seconds)),
        ("nanoseconds".into(), Val::U32(nanoseconds)),
    ])
}

fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn random_u64() -> wasmtime::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| wasmtime::format_err!("no randomness: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

/// `wasi:io/streams.stream-error`. Never returned (writes always succeed), but the result
/// types of the stream methods name it.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    #[allow(dead_code)]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    #[allow(dead_code)]
    Closed,
}

/// `output-stream`, enough for `print!`/`eprint!` and the panic message: writes go to the
/// host's [`GuestOutput`] and always succeed. Typed host functions (not `func_new`), because
/// they take the stream as a borrowed handle and the typed glue ends those borrows.
fn link_output_stream<T: GuestOutput + 'static>(
    inst: &mut LinkerInstance<'_, T>,
) -> wasmtime::Result<()> {
    type Stream = Resource<OutputStream>;
    inst.func_wrap(
        "[method]output-stream.subscribe",
        |_, (_stream,): (Stream,)| Ok((Resource::<Pollable>::new_own(0),)),
    )?;
    inst.func_wrap(
        "[method]output-stream.check-write",
        |_, (_stream,): (Stream,)| Ok((Ok::<u64, StreamError>(STREAM_WRITE_CHUNK),)),
    )?;
    for f in [
        "[method]output-stream.write",
        "[method]output-stream.blocking-write-and-flush",
    ] {
        inst.func_wrap(
            f,
            |mut store: StoreContextMut<'_, T>, (stream, bytes): (Stream, Vec<u8>)| {
                store.data_mut().guest_output(stream.rep(), &bytes);
                Ok((Ok::<(), StreamError>(()),))
            },
        )?;
    }
    for f in [
        "[method]output-stream.flush",
        "[method]output-stream.blocking-flush",
    ] {
        inst.func_wrap(f, |_, (_stream,): (Stream,)| {
            Ok((Ok::<(), StreamError>(()),))
        })?;
    }
    Ok(())
}

/// Only output streams make pollables, and they are always ready, so `poll` never waits.
/// (Clock pollables, the way to sleep, are not provided.)
fn link_poll<T: 'static>(inst: &mut LinkerInstance<'_, T>) -> wasmtime::Result<()> {
    inst.func_wrap("poll", |_, (list,): (Vec<Resource<Pollable>>,)| {
        let ready: Vec<u32> = (0..list.len())
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        Ok((ready,))
    })?;
    inst.func_wrap(
        "[method]pollable.ready",
        |_, (_p,): (Resource<Pollable>,)| Ok((true,)),
    )?;
    inst.func_wrap(
        "[method]pollable.block",
        |_, (_p,): (Resource<Pollable>,)| Ok(()),
    )?;
    Ok(())
}
