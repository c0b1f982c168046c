//! The subcommands besides running the pipeline: the event generator, the
//! topic viewer, the in-memory benchmark and the loss/duplicate audit.

pub mod audit;
pub mod bench;
pub mod generate;
pub mod view;
