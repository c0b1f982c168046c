//! The subcommands, one module each, each with its clap `Args` and its
//! `exec` (the layout of cargo's `commands/`): running the pipeline, the
//! event generator, the topic viewer, the in-memory benchmark, the
//! loss/duplicate audit, the consumer-group tools, the plugin tools, the
//! window-count query, the dead-letter re-drive and the latency probe.
//! `main.rs` parses [`Command`], runs it, and exits with
//! [`CmdError::exit_code`].

pub mod audit;
pub mod bench;
pub mod counts;
pub mod generate;
pub mod group;
pub mod latency;
pub mod plugin;
pub mod redrive;
pub mod run;
pub mod view;

use crate::config::ConfigError;
use crate::kafka::KafkaError;
use crate::pipeline::PipelineError;
use crate::stages::StageError;

/// The subcommands of `pipeline-host`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the pipeline (the default when no subcommand is given).
    Run(Box<run::RunArgs>),
    /// Produce seed-format login events to a topic.
    Generate(generate::GenerateArgs),
    /// Print a topic's records as JSON lines.
    View(view::ViewArgs),
    /// Benchmark the default chain in memory: WebAssembly vs native.
    Bench(bench::BenchArgs),
    /// Check by event identity that every input record reached the output
    /// or the dead-letter topic (or was filtered): prints missing and
    /// duplicated records per partition; exit 1 if any is missing. Takes
    /// the same flags as running the pipeline.
    Audit(Box<audit::AuditArgs>),
    /// Consumer-group tools: describe a group, reset its offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Stage author's tools: validate a component, run it over JSON lines.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// End-to-end latency: tail a topic and measure record timestamp ->
    /// readable, printing p50/p99/max as one JSON line.
    Latency(latency::LatencyArgs),
    /// Global window counts from the stats topic of `version_counts`:
    /// latest record per key, summed over input partitions (JSON lines).
    Counts(counts::CountsArgs),
    /// Copy dead letters back into the input topic once their cause is
    /// fixed (optionally only those of one stage): the original key, value
    /// and headers, without the pipeline's error headers.
    Redrive(redrive::RedriveArgs),
}

impl Command {
    /// Runs the subcommand.
    pub async fn exec(self) -> Result<(), CmdError> {
        match self {
            Command::Run(args) => run::exec(*args).await,
            Command::Generate(args) => generate::exec(args).await,
            Command::View(args) => view::exec(args).await,
            Command::Bench(args) => bench::exec(args).await,
            Command::Audit(args) => audit::exec(*args).await,
            Command::Group(cmd) => group::exec(cmd).await,
            Command::Plugin(cmd) => plugin::exec(cmd),
            Command::Latency(args) => latency::exec(args).await,
            Command::Counts(args) => counts::exec(args).await,
            Command::Redrive(args) => redrive::exec(args).await,
        }
    }
}

/// Exit statuses, documented in the README ("Exit codes").
pub mod exit {
    /// Any other error.
    pub const OTHER: u8 = 1;
    /// Bad flags or configuration.
    pub const CONFIG: u8 = 2;
    /// A stage could not be loaded, refused its configuration, or failed
    /// under `on_error = "stop"`.
    pub const STAGE: u8 = 3;
    /// Kafka unreachable or a topic missing.
    pub const KAFKA: u8 = 4;
    /// Shutdown did not flush within its bound.
    pub const SHUTDOWN_TIMEOUT: u8 = 5;
    /// The consumer group refused this member.
    pub const GROUP: u8 = 6;
    /// A broker refused the TLS or SASL settings.
    pub const REFUSED: u8 = 7;
    /// The brokers' ACLs deny an operation the pipeline needs.
    pub const DENIED: u8 = 8;
    /// A topic refused a record for good (a dead letter, a side record, a
    /// checkpoint) and nothing was committed past it.
    pub const SINK_REFUSED: u8 = 9;
    /// Exactly-once: the transactional producer was fenced (another
    /// process took its transactional id) or its transaction could not be
    /// completed; nothing of the open transaction became visible.
    pub const TRANSACTION: u8 = 10;
}

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The configuration, a stage, Kafka or the group failed: the errors
    /// the pipeline itself stops with (and their exit codes).
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    /// A group tool failed or was refused.
    #[error(transparent)]
    Group(Box<group::GroupToolError>),
    /// Flags that do not go together.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a stream failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// `audit` found input records in neither topic.
    #[error("{missing} input records are missing from {output} and {dead_letter}")]
    Missing {
        /// How many.
        missing: u64,
        /// The output topic.
        output: String,
        /// The dead-letter topic.
        dead_letter: String,
    },
    /// `audit` of an exactly-once pipeline found an input with more than
    /// the outcomes its chain makes.
    #[error(
        "exactly-once: {duplicates} duplicate outcomes in {output} and {dead_letter} (read read_committed)"
    )]
    Duplicates {
        /// How many extra copies.
        duplicates: u64,
        /// The output topic.
        output: String,
        /// The dead-letter topic.
        dead_letter: String,
    },
}

impl CmdError {
    /// The process exit status for this error (README, "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Pipeline(e) => match &**e {
                PipelineError::Config(_) => exit::CONFIG,
                PipelineError::Stage(_) => exit::STAGE,
                PipelineError::Kafka(k) => kafka_code(k),
                PipelineError::ShutdownTimeout(_) => exit::SHUTDOWN_TIMEOUT,
                PipelineError::Group(_) => exit::GROUP,
                PipelineError::Sink(e) if e.transaction => exit::TRANSACTION,
                PipelineError::Sink(_) => exit::SINK_REFUSED,
                PipelineError::Transaction(_) => exit::TRANSACTION,
            },
            CmdError::Usage(_) => exit::CONFIG,
            CmdError::Group(e) => match &**e {
                group::GroupToolError::Kafka(k) => kafka_code(k),
                _ => exit::OTHER,
            },
            CmdError::Io(..) | CmdError::Missing { .. } | CmdError::Duplicates { .. } => {
                exit::OTHER
            }
        }
    }
}

/// The subcommands' own errors of the pipeline's kinds.
macro_rules! through_pipeline {
    ($($error:ty),*) => {$(
        impl From<$error> for CmdError {
            fn from(e: $error) -> Self {
                CmdError::Pipeline(Box::new(e.into()))
            }
        }
    )*};
}
through_pipeline!(PipelineError, ConfigError, StageError, KafkaError);

impl From<group::GroupToolError> for CmdError {
    fn from(e: group::GroupToolError) -> Self {
        CmdError::Group(Box::new(e))
    }
}

fn kafka_code(e: &KafkaError) -> u8 {
    match e {
        KafkaError::Refused(_) => exit::REFUSED,
        KafkaError::Denied { .. } => exit::DENIED,
        _ => exit::KAFKA,
    }
}
