//! The subcommands besides running the pipeline: the event generator, the
//! topic viewer, the in-memory benchmark, the loss/duplicate audit, the
//! consumer-group tools, the plugin tools and the window-count query.

pub mod audit;
pub mod bench;
pub mod counts;
pub mod generate;
pub mod group;
pub mod plugin;
pub mod redrive;
pub mod view;
