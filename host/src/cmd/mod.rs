//! The subcommands besides running the pipeline: the event generator, the
//! topic viewer, the in-memory benchmark, the loss/duplicate audit, the
//! consumer-group tools, the plugin tools, the window-count query and the
//! latency probe.

pub mod audit;
pub mod bench;
pub mod counts;
pub mod generate;
pub mod group;
pub mod latency;
pub mod plugin;
pub mod redrive;
pub mod view;
