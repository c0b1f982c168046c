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
//! and publishes it only if all of that passed. With an output format
//! behind a schema registry, the new set must also keep the output's
//! contract ([`Contract`]): it runs over a sample of recent input and its
//! outputs must encode with the output's writer schema. A rejected reload
//! is one error log line naming the stage and the reason, counted, and
//! shown on `/stages`; the running set keeps serving. Workers switch
//! between two batches, handing stateful stages' state to their
//! successors.

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
    /// The new stages' outputs, over a sample of recent input, no longer
    /// fit the output's writer schema.
    #[error(
        "the new stages break the output's contract: {misfits} of {sampled} sampled records make output that does not fit; the first: {reason}"
    )]
    Contract {
        /// Sampled input records whose output does not fit.
        misfits: usize,
        /// Records sampled.
        sampled: usize,
        /// The first one's reason (field and expected type).
        reason: String,
    },
}

/// How many recent input records a contract check runs the new stages on.
pub const SAMPLE: usize = 200;

/// Records sampled from each input batch.
const PER_BATCH: usize = 8;

/// One sampled input record, as the stages saw it (decoded).
#[derive(Debug, Clone)]
struct Sampled {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    timestamp_ms: i64,
    offset: i64,
}

impl crate::stages::InputRecord for Sampled {
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    fn value(&self) -> Option<&[u8]> {
        Some(&self.value)
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|(k, v)| (&k[..], &v[..]))
    }

    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    fn offset(&self) -> i64 {
        self.offset
    }
}

/// The output's contract, checked before a reload goes live: the output's
/// encoder (once the pipeline has started it) and a ring of recent input
/// records that reached the stages. No peer checks this: a stage version
/// that adds a field of the wrong type, or stops filling a required one,
/// would otherwise go live and dead-letter its outputs one by one.
#[derive(Debug, Default)]
pub struct Contract {
    encoder: std::sync::OnceLock<Arc<crate::format::Encoder>>,
    sample: std::sync::Mutex<std::collections::VecDeque<Sampled>>,
    /// The last rejected reload: when and why (shown on `/stages`).
    rejected: std::sync::Mutex<Option<serde_json::Value>>,
}

impl Contract {
    /// Sets the output's encoder: from now on reloads are checked.
    pub fn set_encoder(&self, encoder: Arc<crate::format::Encoder>) {
        let _ = self.encoder.set(encoder);
    }

    /// True when reloads are checked (the output has a schema).
    pub fn checks(&self) -> bool {
        self.encoder.get().is_some()
    }

    /// Keeps a few records of a batch the stages are about to see.
    pub fn sample<R: crate::stages::InputRecord>(&self, records: &[R]) {
        if !self.checks() || records.is_empty() {
            return;
        }
        let step = (records.len() / PER_BATCH).max(1);
        let mut ring = self.sample.lock().expect("sample");
        for r in records.iter().step_by(step).take(PER_BATCH) {
            let (Some(value), None) = (r.value(), r.rejected()) else {
                continue;
            };
            if ring.len() >= SAMPLE {
                ring.pop_front();
            }
            ring.push_back(Sampled {
                key: r.key().map(<[u8]>::to_vec),
                value: value.to_vec(),
                headers: r.headers().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
                timestamp_ms: r.timestamp_ms(),
                offset: r.offset(),
            });
        }
    }

    /// Runs `set` over the sample and encodes its outputs: the misfits.
    fn check(&self, set: &StageSet) -> Result<(), ReloadError> {
        let Some(encoder) = self.encoder.get() else {
            return Ok(());
        };
        let sample: Vec<Sampled> = self
            .sample
            .lock()
            .expect("sample")
            .iter()
            .cloned()
            .collect();
        if sample.is_empty() {
            return Ok(());
        }
        let mut chain = set.chain()?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = chain.process("contract-check", 0, now, &sample);
        let misfits = crate::format::encode_outputs(encoder, None, &mut out.output, &[]);
        match misfits.first() {
            None => Ok(()),
            Some((_, reason)) => Err(ReloadError::Contract {
                misfits: misfits.len(),
                sampled: sample.len(),
                reason: reason.clone(),
            }),
        }
    }

    fn rejected(&self, reason: &str, error: &ReloadError) {
        *self.rejected.lock().expect("rejected") = Some(serde_json::json!({
            "at": chrono::Utc::now().to_rfc3339(),
            "trigger": reason,
            "error": error.to_string(),
        }));
    }
}

/// Handle used by the admin endpoint to ask for reloads and read the set.
#[derive(Debug, Clone)]
pub struct Control {
    requests: mpsc::Sender<Request>,
    current: watch::Receiver<SharedSet>,
    contract: Arc<Contract>,
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

    /// The running set's description, with the last rejected reload.
    pub fn describe(&self) -> serde_json::Value {
        let mut d = self.current.borrow().describe();
        if let Some(r) = self.contract.rejected.lock().expect("rejected").clone() {
            d["last_rejected_reload"] = r;
        }
        d
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
    contract: Arc<Contract>,
    shutdown: CancellationToken,
) -> Control {
    let (tx, rx) = mpsc::channel(8);
    let control = Control {
        requests: tx.clone(),
        current: sets.subscribe(),
        contract: contract.clone(),
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
    tokio::spawn(serve(engine, config, sets, metrics, contract, rx, shutdown));
    control
}

/// Runs reload requests in order until shutdown.
async fn serve(
    engine: WasmEngine,
    mut config: PipelineConfig,
    sets: watch::Sender<SharedSet>,
    metrics: Arc<Metrics>,
    contract: Arc<Contract>,
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
        let outcome = reload(&engine, &mut config, &sets, &contract, &reason).await;
        let counter = match &outcome {
            Ok(_) => &metrics.reloads_applied,
            Err(e) => {
                contract.rejected(&reason, e);
                &metrics.reloads_rejected
            }
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
    contract: &Arc<Contract>,
    reason: &str,
) -> Result<serde_json::Value, ReloadError> {
    let started = Instant::now();
    let mut fresh = match config.reload() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(reason, error = %e, "reload rejected: the configuration is invalid; the running stages keep serving");
            return Err(e.into());
        }
    };
    if fresh.routes != config.routes {
        tracing::warn!(
            reason,
            "the configuration maps routes differently; the running routes stay until a restart (a new stage must use them)"
        );
        fresh.routes = config.routes.clone();
    }
    let previous = sets.borrow().clone();
    // The sink writes the routes it started with: a new stage is checked
    // against those.
    let (engine2, stages, tombstones, routes, prev) = (
        engine.clone(),
        fresh.stages.clone(),
        previous.tombstones,
        config.routes.clone(),
        previous.clone(),
    );
    let built = tokio::task::spawn_blocking(move || {
        StageSet::load(
            &engine2,
            &stages,
            tombstones,
            &routes,
            true,
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
    let (checked, check) = (contract.clone(), Arc::new(set));
    let candidate = check.clone();
    let kept = tokio::task::spawn_blocking(move || checked.check(&candidate)).await?;
    if let Err(e) = kept {
        tracing::error!(reason, error = %e, "reload rejected; the running stages keep serving");
        return Err(e);
    }
    let set = Arc::try_unwrap(check).expect("the check's copy is dropped");
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
