//! WebAssembly stages: the wasmtime engine, compiled plugins, and the
//! sandboxed instances that process batches.
//!
//! - [`engine`]: one [`WasmEngine`] per process: the wasmtime engines (one
//!   per stack size), their linkers, and the epoch thread that bounds each
//!   call's time.
//! - [`cache`]: compiled components on disk, so a restart does not compile.
//! - [`plugin`]: one [`Plugin`] per configured stage: its file read once
//!   ([`PluginFile`]), compiled, and checked against the `stage` (or
//!   `stateful-stage`) world.
//! - [`contract`]: the contract versions (0.2.0, 0.1.0) and the calls into
//!   a stage's exports, the same for both.
//! - [`instance`]: one [`WasmStage`] per partition worker: a sandboxed
//!   instance that is discarded, and rebuilt from the plugin before the next
//!   batch, when it traps, exceeds a limit or returns malformed outcomes.
//! - [`host`]: what a stage's store holds and the imports it may call: the
//!   `host` interface (logging), a WASI with no files, network or clocks,
//!   and the memory limiter.

mod cache;
mod contract;
mod engine;
mod host;
mod instance;
mod plugin;

pub use contract::Version;
pub use engine::{CompileSource, Interrupt, WasmEngine};
pub use instance::WasmStage;
pub use plugin::{Plugin, PluginFile};

/// Bindings generated from `wit/stage.wit`, world `stage`: the host's
/// imports and the contract's types ([`contract`] calls the exports).
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "stage",
        imports: { default: trappable },
    });
}

use bindings::pipeline::stage::types as wit;
