//! `pipeline-host`: a Kafka pipeline whose transform stages are sandboxed
//! WebAssembly components. Pure Rust: `rskafka` for the wire, `wasmtime`
//! for the stages, no librdkafka.
//!
//! # Layout (in the order a record travels)
//!
//! - [`source`]: reads each input partition in offset order, in batches.
//! - [`stages`]: validates input and runs it through the chain of stages
//!   (WebAssembly components implementing `wit/stage.wit`).
//! - [`sink`]: produces results to the output topic and failures to the
//!   dead-letter topic, waiting for acknowledgement.
//! - [`offsets`]: per partition, the offset below which everything has been
//!   delivered: what is committed.
//! - [`group`]: consumer groups and offset commits (coordinator protocol).
//! - [`state`]: checkpoints of stateful stages, written with the commits.
//! - [`pipeline`]: wires the above per partition; start-up and shutdown.
//! - [`reload`]: hot swap of stages (file watch, SIGHUP, admin call), and
//!   [`admin`], the admin HTTP endpoint with [`metrics`] (Prometheus).
//!
//! Around them: [`config`] (TOML + flags), [`kafka`] (client, topics,
//! timeouts), [`backoff`] (the retry schedule), [`shutdown`] (signals), [`stats`] (counters and the log line),
//! [`events`] (the deterministic event generator) and [`cmd`] (generate,
//! view, bench).

#![deny(rustdoc::broken_intra_doc_links)]

pub mod admin;
pub mod backoff;
pub mod cmd;
pub mod config;
pub mod events;
pub mod group;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod reload;
pub mod secret;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stages;
pub mod state;
pub mod stats;

pub use config::PipelineConfig;
pub use pipeline::{Pipeline, PipelineError};
