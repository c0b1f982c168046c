//! The `pipeline-host` command line, its edge only: parse the flags, set
//! up logging, run the subcommand (each lives in `cmd/<name>.rs` of the
//! library, with its arguments), and map its error to an exit code.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use pipeline_host::cmd::{Command, exit, run::RunArgs};

/// The static (musl) build uses mimalloc: musl's own allocator is slow on
/// this workload (README, "Static binary and image").
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A librdkafka-free Kafka pipeline whose transform stages are sandboxed
/// WebAssembly components.
#[derive(Debug, Parser)]
#[command(
    name = "pipeline-host",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: `run`'s flags.
    #[command(flatten)]
    run: RunArgs,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PIPELINE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rskafka=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(pipeline_host::stages::STAGE_THREAD_STACK)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(exit::OTHER);
        }
    };
    let command = cli
        .command
        .unwrap_or_else(|| Command::Run(Box::new(cli.run)));
    match runtime.block_on(command.exec()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "pipeline-host failed");
            ExitCode::from(e.exit_code())
        }
    }
}
