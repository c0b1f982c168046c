//! The default stages compiled into the host, run through the same chain as
//! the WebAssembly ones. Used by `pipeline-host bench` to measure what the
//! sandbox costs; the pipeline itself always runs components. The stage
//! crates are linked only with the `native-stages` feature.

use stage_sdk::NativeStage;
#[cfg(feature = "native-stages")]
use stage_sdk::{Config, Stage};

use super::{StageError, StageRunner};

/// A native stage with its name.
pub struct NativeRunner {
    /// The name it runs under in the chain.
    pub name: String,
    /// The stage, compiled into the host.
    pub stage: Box<dyn NativeStage + Send>,
    /// The routes it declared in `init`.
    pub routes: Vec<String>,
}

/// Names of the default stages, in their default order.
pub const DEFAULT_STAGES: [&str; 4] = ["android_filter", "enrich", "categorize", "anomaly"];

/// Builds the native version of default stage `name` with `config`.
#[cfg(feature = "native-stages")]
pub fn default_stage(name: &str, config: &[(String, String)]) -> Result<StageRunner, StageError> {
    let cfg = Config::new(config.iter().cloned());
    fn build<S: Stage + Send>(
        name: &str,
        cfg: &Config,
    ) -> Result<Box<dyn NativeStage + Send>, StageError> {
        S::init(cfg)
            .map(|s| Box::new(s) as Box<dyn NativeStage + Send>)
            .map_err(|message| StageError::ConfigRefused {
                stage: name.into(),
                message,
            })
    }
    let stage = match name {
        "android_filter" => build::<android_filter::AndroidFilter>(name, &cfg)?,
        "enrich" => build::<enrich::Enrich>(name, &cfg)?,
        "categorize" => build::<categorize::Categorize>(name, &cfg)?,
        "anomaly" => build::<anomaly::Anomaly>(name, &cfg)?,
        other => {
            return Err(StageError::Engine(format!(
                "no native build of stage {other}; native stages: {}",
                DEFAULT_STAGES.join(", ")
            )));
        }
    };
    Ok(StageRunner::Native(NativeRunner {
        name: name.into(),
        stage,
        routes: cfg.routes(),
    }))
}

/// Without the `native-stages` feature there is no native build of any
/// stage.
#[cfg(not(feature = "native-stages"))]
pub fn default_stage(name: &str, _config: &[(String, String)]) -> Result<StageRunner, StageError> {
    Err(StageError::Engine(format!(
        "this binary has no native build of stage {name}: build it with `--features native-stages` (tests/scripts/bench.sh does)"
    )))
}
