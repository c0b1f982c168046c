//! Hot reload: replace, add, remove or reorder stages while the pipeline
//! runs.
//!
//! Three triggers lead to the same reload:
//! - a changed plugin file or config file (polled every
//!   [`POLL`]; a change counts once the file's size and mtime hold still
//!   for one poll, so a half-copied file is not loaded);
//! - `SIGHUP`;
//! - `POST /reload` on the admin endpoint ([`crate::admin`]).
//!
//! A reload reads the configuration again (file + the original flags),
//! builds the next [`StageSet`] beside the running one (compiling only what
//! changed, checking the world, the sha256 pin and each stage's `init`),
//! and publishes it only if all of that passed. A rejected reload is one
//! error log line naming the stage and the reason; the running set keeps
//! serving. Workers switch between two batches, handing stateful stages'
//! state to their successors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{ConfigError, PipelineConfig};
use crate::metrics::Metrics;
use crate::shutdown::CancellationToken;
use crate::stages::StageError;
use crate::stages::set::{SharedSet, StageSet};
use crate::stages::wasm::WasmEngine;

/// How often watched files are checked.
pub const POLL: Duration = Duration::from_millis(250);

/// Why a reload runs.
#[derive(Debug)]
pub enum Request {
    /// A watched file changed.
    FileChanged(PathBuf),
    /// SIGHUP.
    Signal,
    /// An admin call; the outcome goes back on the channel.
    Admin(oneshot::Sender<Result<serde_json::Value, ReloadError>>),
}

/// Why a reload was rejected (the running stages keep serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration read again is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new or changed stage could not be loaded or refused its settings.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The task that builds the new set failed.
    #[error("the reload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The pipeline stopped before the reload ran.
    #[error("the pipeline is shutting down")]
    ShuttingDown,
}

/// Handle used by the admin endpoint to ask for reloads and read the set.
#[derive(Debug, Clone)]
pub struct Control {
    requests: mpsc::Sender<Request>,
    current: watch::Receiver<SharedSet>,
}

impl Control {
    /// Reloads now and returns the new set's description, or why it was
    /// rejected.
    pub async fn reload(&self) -> Result<serde_json::Value, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Admin(tx))
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        rx.await.map_err(|_| ReloadError::ShuttingDown)?
    }

    /// The running set's description.
    pub fn describe(&self) -> serde_json::Value {
        self.current.borrow().describe()
    }

    /// The running stages' names, in chain order.
    pub fn stage_names(&self) -> Vec<String> {
        self.current
            .borrow()
            .stages
            .iter()
            .map(|s| s.config.name.clone())
            .collect()
    }
}

/// Starts the reloader: the SIGHUP handler, the file watcher (when
/// `config.watch`), and the task that runs reloads one at a time. Returns
/// the handle for the admin endpoint.
pub fn start(
    engine: WasmEngine,
    config: PipelineConfig,
    sets: watch::Sender<SharedSet>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Control {
    let (tx, rx) = mpsc::channel(8);
    let control = Control {
        requests: tx.clone(),
        current: sets.subscribe(),
    };
    let hup = tx.clone();
    tokio::spawn(async move {
        let Ok(mut signals) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot install the SIGHUP handler; reload with the admin endpoint");
            return;
        };
        while signals.recv().await.is_some() {
            if hup.send(Request::Signal).await.is_err() {
                return;
            }
        }
    });
    if config.watch {
        tokio::spawn(watch_files(config.clone(), sets.subscribe(), tx));
    }
    tokio::spawn(serve(engine, config, sets, metrics, rx, shutdown));
    control
}

/// Runs reload requests in order until shutdown.
async fn serve(
    engine: WasmEngine,
    mut config: PipelineConfig,
    sets: watch::Sender<SharedSet>,
    metrics: Arc<Metrics>,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => return },
            _ = shutdown.cancelled() => return,
        };
        let (reason, reply) = match request {
            Request::FileChanged(path) => (format!("{} changed", path.display()), None),
            Request::Signal => ("SIGHUP".to_string(), None),
            Request::Admin(reply) => ("admin request".to_string(), Some(reply)),
        };
        let outcome = reload(&engine, &mut config, &sets, &reason).await;
        let counter = if outcome.is_ok() {
            &metrics.reloads_applied
        } else {
            &metrics.reloads_rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics
            .generation
            .store(sets.borrow().generation, Ordering::Relaxed);
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}

/// One reload: read the configuration, build and check the next set,
/// publish it if it differs from the running one.
async fn reload(
    engine: &WasmEngine,
    config: &mut PipelineConfig,
    sets: &watch::Sender<SharedSet>,
    reason: &str,
) -> Result<serde_json::Value, ReloadError> {
    let started = Instant::now();
    let fresh = match config.reload() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(reason, error = %e, "reload rejected: the configuration is invalid; the running stages keep serving");
            return Err(e.into());
        }
    };
    let previous = sets.borrow().clone();
    let (engine2, stages, tombstones, prev) = (
        engine.clone(),
        fresh.stages.clone(),
        previous.tombstones,
        previous.clone(),
    );
    let built = tokio::task::spawn_blocking(move || {
        StageSet::load(
            &engine2,
            &stages,
            tombstones,
            Some(&prev),
            prev.generation + 1,
        )
    })
    .await?;
    let set = match built {
        Ok(set) => set,
        Err(e) => {
            tracing::error!(reason, error = %e, "reload rejected; the running stages keep serving");
            return Err(e.into());
        }
    };
    if fingerprint(&set) == fingerprint(&previous) {
        tracing::info!(
            reason,
            generation = previous.generation,
            "reload: no stage changed"
        );
        return Ok(previous.describe());
    }
    let described = set.describe();
    tracing::info!(
        reason,
        generation = set.generation,
        stages = ?set.stages.iter().map(|s| s.config.name.as_str()).collect::<Vec<_>>(),
        took_ms = started.elapsed().as_millis() as u64,
        "stages reloaded: partitions switch at their next batch"
    );
    *config = fresh;
    sets.send_replace(Arc::new(set));
    Ok(described)
}

/// What makes two sets behave the same: stage names, file contents and
/// settings, in order.
fn fingerprint(set: &StageSet) -> Vec<String> {
    set.stages
        .iter()
        .map(|s| format!("{}|{}|{:?}", s.config.name, s.plugin.sha256(), s.config))
        .collect()
}

/// Size and modification time of a file, `None` when it is missing.
fn signature(path: &PathBuf) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Polls the config file and the running set's plugin files; asks for a
/// reload when one changed and held still for a poll.
async fn watch_files(
    config: PipelineConfig,
    mut current: watch::Receiver<SharedSet>,
    requests: mpsc::Sender<Request>,
) {
    type Sig = Option<(u64, SystemTime)>;
    let files = |set: &StageSet| -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = set.stages.iter().map(|s| s.config.plugin.clone()).collect();
        f.extend(config.origin.config.clone());
        f
    };
    let mut watched: Vec<PathBuf> = files(&current.borrow_and_update());
    // The state the running set was loaded from, and the last poll's view.
    let mut loaded: BTreeMap<PathBuf, Sig> =
        watched.iter().map(|p| (p.clone(), signature(p))).collect();
    let mut seen = loaded.clone();
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if current.has_changed().unwrap_or(false) {
            watched = files(&current.borrow_and_update());
            loaded = watched.iter().map(|p| (p.clone(), signature(p))).collect();
            seen = loaded.clone();
            continue;
        }
        for path in &watched {
            let now = signature(path);
            let was_seen = seen.insert(path.clone(), now);
            if now.is_some() && was_seen == Some(now) && loaded.get(path) != Some(&now) {
                // Changed since the load, and still since the last poll.
                loaded.insert(path.clone(), now);
                tracing::info!(file = %path.display(), "watched file changed; reloading");
                if requests
                    .send(Request::FileChanged(path.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
