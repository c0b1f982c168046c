//! `pipeline-host run` (also the default without a subcommand): loads the
//! configuration, prepares every stage, and runs the pipeline until a
//! signal (or, with `--until-end`, until every partition is read).

use super::CmdError;
use crate::config::{PipelineConfig, Sources};
use crate::pipeline::Pipeline;
use crate::shutdown;

/// `pipeline-host run`: a config file and the flags over it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub sources: Sources,
}

/// Runs the pipeline until a signal, then flushes and stops.
pub async fn exec(args: RunArgs) -> Result<(), CmdError> {
    let pipeline = Pipeline::prepare(PipelineConfig::load(&args.sources)?)?;
    let sd = shutdown::CancellationToken::new();
    shutdown::on_signals(sd.clone());
    pipeline.run(sd).await?;
    Ok(())
}
