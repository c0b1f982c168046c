//! The subcommands besides running the pipeline: the event generator, the
//! topic viewer, the in-memory benchmark, the loss/duplicate audit, and the
//! consumer-group tools.

pub mod audit;
pub mod bench;
pub mod generate;
pub mod group;
pub mod plugin;
pub mod redrive;
pub mod view;
