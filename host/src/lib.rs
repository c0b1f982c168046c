//! `pipeline-host`: a Kafka pipeline whose transform stages are sandboxed
//! WebAssembly components. Pure Rust: `rskafka` for the data path, the
//! `kafka-protocol` crate for the group calls, `wasmtime` for the stages,
//! no librdkafka.
//!
//! # The map, in the order a record travels
//!
//! - `source`: reads one input partition in offset order, in batches
//!   ([`rskafka`]'s fetch, with retries).
//! - [`stages`]: validates the input and runs it through the chain of
//!   stages, WebAssembly components implementing `wit/stage.wit`
//!   ([`stages::Chain`], [`stages::wasm`]).
//! - `sink`: produces the results to the output topic, failures to the
//!   dead-letter topic and side records to theirs, and waits for the
//!   acknowledgements.
//! - `offsets`: per partition, the offset below which everything has been
//!   delivered: what may be committed.
//! - `pipeline`: the partition worker that runs those steps
//!   (`pipeline/worker.rs`: fetch -> process -> deliver -> acknowledge), the
//!   group membership around it (`pipeline/membership.rs`: join, revoke,
//!   assign, heartbeat, commit, leave), start-up and shutdown.
//! - [`group`]: the consumer-group protocol itself (coordinator calls,
//!   assignors, one member's state); `state`: checkpoints of stateful stages,
//!   written with the commits.
//!
//! Around the data path: `config` (every setting once: flag, file key,
//! default), [`kafka`] (the client, TLS/SASL, ACL preflight, framing),
//! `reload` (hot swap of stages), `admin` (the HTTP endpoint) with
//! `metrics` (Prometheus) and `stats` (the log line), `shutdown` (signals),
//! `events` (the deterministic event generator), and [`cmd`]: one module
//! per subcommand, each with its arguments.
//!
//! The public items are what the binary and the end-to-end tests use; the
//! rest is crate-internal.

#![deny(rustdoc::broken_intra_doc_links)]

mod admin;
mod backoff;
pub mod cmd;
mod config;
mod events;
mod format;
pub mod group;
pub mod kafka;
mod metrics;
mod offsets;
mod pipeline;
mod reload;
pub mod secret;
mod shutdown;
mod sink;
mod source;
pub mod stages;
mod state;
mod stats;

pub use pipeline::PipelineError;
