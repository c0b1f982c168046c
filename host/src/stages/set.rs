//! The stage set: one generation of the configured chain, compiled and
//! validated, from which every partition worker instantiates its chain.
//!
//! A reload builds the next generation beside the running one: unchanged
//! stages (same file content, limits) reuse their compiled plugin, changed
//! ones are compiled, and every stage is instantiated and initialised once
//! as a check. Only a set that passed all of that is published; workers
//! pick it up between two batches (see `pipeline.rs`), so each record is
//! processed by exactly one generation.

use std::sync::Arc;
use std::time::Instant;

use crate::config::StageConfig;

use super::wasm::{CompileSource, Plugin, PluginFile, WasmEngine};
use super::{Chain, RouteTable, StageError, StageRules, StageRunner, Tombstones};

/// One stage of a set: its configuration and compiled plugin.
#[derive(Debug, Clone)]
pub struct LoadedStage {
    /// The stage's configuration.
    pub config: StageConfig,
    /// The compiled, validated component.
    pub plugin: Plugin,
    /// The pipeline's route numbers of the routes it declared.
    pub routes: Vec<u8>,
    /// The names it declared, in order.
    pub route_names: Vec<String>,
}

/// One generation of the chain.
#[derive(Debug)]
pub struct StageSet {
    /// Starts at 1 and grows by one with every accepted reload.
    pub generation: u64,
    /// Stages in chain order.
    pub stages: Vec<LoadedStage>,
    /// Null-value policy of the chains built from this set.
    pub tombstones: Tombstones,
}

impl StageSet {
    /// Loads `configs` as generation `generation`, reusing the compiled
    /// plugins of `previous` where file content and limits are unchanged.
    /// Each stage is instantiated and initialised once, so a set that loads
    /// is a set that runs. A stage that declares a route `routes` does not
    /// map is refused when `strict` (a reload), else loads with the route
    /// unmapped (its batches that use it fail under its policy).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        engine: &WasmEngine,
        configs: &[StageConfig],
        tombstones: Tombstones,
        routes: &RouteTable,
        strict: bool,
        previous: Option<&StageSet>,
        generation: u64,
    ) -> Result<Self, StageError> {
        let mut stages = Vec::with_capacity(configs.len());
        for c in configs {
            let started = Instant::now();
            let file = PluginFile::read(&c.name, &c.plugin)?;
            let sha256 = &file.sha256;
            if let Some(pin) = &c.sha256
                && !pin.eq_ignore_ascii_case(sha256)
            {
                return Err(StageError::Load {
                    stage: c.name.clone(),
                    path: c.plugin.clone(),
                    reason: format!(
                        "sha256 mismatch: the file is {sha256} but the configuration pins {pin}; \
                         if the new file is intended, update the stage's sha256 setting"
                    ),
                });
            }
            let reused = previous.and_then(|p| {
                p.stages.iter().find(|s| {
                    s.plugin.sha256() == sha256.as_str()
                        && s.config.name == c.name
                        && s.config.limits == c.limits
                })
            });
            let plugin = match reused {
                Some(s) => s.plugin.clone(),
                None => engine.load_file(&c.name, &c.plugin, &file, c.limits)?,
            };
            let declared = plugin.instantiate(&c.config)?.routes()?;
            let numbers = routes.numbers(&c.name, &declared, strict)?;
            if reused.is_none() {
                tracing::info!(
                    stage = %c.name, plugin = %c.plugin.display(), sha256 = %plugin.sha256(),
                    stateful = plugin.is_stateful(),
                    contract = plugin.version().as_str(),
                    routes = ?declared,
                    compile = if plugin.source() == CompileSource::Cached { "cache" } else { "compiled" },
                    load_ms = started.elapsed().as_millis() as u64,
                    "stage loaded"
                );
            }
            stages.push(LoadedStage {
                config: c.clone(),
                plugin,
                routes: numbers,
                route_names: declared,
            });
        }
        Ok(Self {
            generation,
            stages,
            tombstones,
        })
    }

    /// A fresh chain of instances (as each partition worker gets).
    pub fn chain(&self) -> Result<Chain, StageError> {
        let runners = self
            .stages
            .iter()
            .map(|s| {
                s.plugin
                    .instantiate(&s.config.config)
                    .map(|s| StageRunner::Wasm(Box::new(s)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rules = self
            .stages
            .iter()
            .map(|s| StageRules {
                on_error: s.config.on_error,
                outputs: s.config.outputs.clone(),
                any_output: false,
                routes: s.routes.clone(),
                route_names: s.route_names.clone(),
            })
            .collect();
        Ok(Chain::new(runners, self.tombstones).with_rules(rules))
    }

    /// A chain of this set that takes over the state of `old`'s stateful
    /// stages with the same names (snapshot of the old instance, restore
    /// into the new one).
    pub fn successor(&self, old: &mut Chain) -> Result<Chain, StageError> {
        let mut chain = self.chain()?;
        if old.is_stateful() {
            let states = old.snapshot()?;
            chain.restore(&states)?;
        }
        Ok(chain)
    }

    /// True when some stage keeps state.
    pub fn is_stateful(&self) -> bool {
        self.stages.iter().any(|s| s.plugin.is_stateful())
    }

    /// What the set is, for log lines and the admin endpoint.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "generation": self.generation,
            "stages": self.stages.iter().map(|s| serde_json::json!({
                "name": s.config.name,
                "plugin": s.config.plugin.display().to_string(),
                "sha256": s.plugin.sha256(),
                "stateful": s.plugin.is_stateful(),
                "contract": s.plugin.version().as_str(),
                "routes": s.route_names,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A shared pointer to the current set.
pub type SharedSet = Arc<StageSet>;
