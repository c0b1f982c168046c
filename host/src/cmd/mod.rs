//! The subcommands besides running the pipeline: the event generator, the
//! topic viewer and the in-memory benchmark.

pub mod bench;
pub mod generate;
pub mod view;
