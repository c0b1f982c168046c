//! Configuration: a TOML file (`--config pipeline.toml`) and command-line
//! flags merged into one validated [`PipelineConfig`]. Flags win over the
//! file. See `README.md` ("Configuration reference") and
//! `host/pipeline.example.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::group::{Assignor, GroupSettings};
use crate::kafka::KafkaSettings;
use crate::kafka::security::{SaslOptions, SecurityArgs, SecurityError, TlsOptions};
use crate::secret::{self, Secret, SecretError};
use crate::source::{FetchSettings, StartFrom};
use crate::stages::{FailurePolicy, StageLimits, Tombstones};

/// The replication factor that asks the broker for its own
/// `default.replication.factor` when the host creates a topic (KIP-464).
pub const BROKER_DEFAULT_REPLICATION: i16 = -1;

/// Errors in the configuration, each naming the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A setting is missing or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// A secret (password, token) could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The TLS or SASL settings are unusable.
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// The `[kafka]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaFile {
    /// Bootstrap brokers: `"host:port"` or a list.
    pub bootstrap: Option<StringOrList>,
    /// Client id.
    pub client_id: Option<String>,
    /// Timeout of one request, milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// How long to wait for the brokers at start-up, milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// `[kafka.tls]`: TLS to the brokers.
    pub tls: Option<TlsOptions>,
    /// `[kafka.sasl]`: SASL authentication.
    pub sasl: Option<SaslOptions>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// `"a,b"`.
    One(String),
    /// `["a", "b"]`.
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => split_list(&s),
            StringOrList::Many(v) => v,
        }
    }
}

/// Splits a comma-separated list, trimming items and skipping empty ones.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `[input]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Input topic.
    pub topic: Option<String>,
    /// Start position without a committed offset.
    pub start: Option<StartFrom>,
    /// Bytes per fetch.
    pub fetch_max_bytes: Option<i32>,
    /// Broker long-poll wait, milliseconds.
    pub fetch_max_wait_ms: Option<u64>,
    /// What to do with null values.
    pub tombstones: Option<Tombstones>,
    /// Largest batch handed to the stages, in records.
    pub max_batch_records: Option<usize>,
}

/// A table naming one topic.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicFile {
    /// Topic name.
    pub topic: Option<String>,
}

/// The `[topics]` table: creation of missing topics.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Create missing topics (default true).
    pub create: Option<bool>,
    /// Partitions of created topics.
    pub partitions: Option<i32>,
    /// Replication factor of created topics; -1 (the default) leaves it to
    /// the broker's `default.replication.factor`.
    pub replication_factor: Option<i16>,
}

/// The `[group]` table: consumer group membership.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Group id; without one the host reads every partition and commits
    /// nothing.
    pub id: Option<String>,
    /// Static member id (`group.instance.id`).
    pub instance_id: Option<String>,
    /// Session timeout, milliseconds.
    pub session_timeout_ms: Option<u64>,
    /// Rebalance timeout, milliseconds.
    pub rebalance_timeout_ms: Option<u64>,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_interval_ms: Option<u64>,
    /// Commit interval, milliseconds.
    pub commit_interval_ms: Option<u64>,
    /// `range` or `cooperative-sticky`.
    pub assignor: Option<Assignor>,
}

/// One `[[stage]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    /// Name in logs and dead-letter headers (default: the file stem).
    pub name: Option<String>,
    /// Path of the `.wasm` (or `.wat`) component, relative to the config
    /// file.
    pub plugin: PathBuf,
    /// Settings passed to the stage's `init`. Strings, numbers and booleans
    /// are passed as text; arrays are joined with commas.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Linear memory cap, MiB.
    pub memory_mb: Option<usize>,
    /// Time budget per batch, milliseconds.
    pub time_budget_ms: Option<u64>,
    /// Native stack the stage may use, KiB.
    pub stack_kb: Option<usize>,
    /// What a stage error does to its batch: `dead-letter`, `skip`, `stop`.
    pub on_error: Option<FailurePolicy>,
    /// Expected sha256 of the plugin file (hex); a different file is
    /// refused, at start and on reload.
    pub sha256: Option<String>,
    /// Side outputs of a stateful stage: output name -> topic.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
}

/// The `[runtime]` table: how the host runs its stages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    /// File holding the token the admin endpoint requires (`Authorization:
    /// Bearer <token>`) on everything but `/healthz` and `/readyz`; the
    /// `PIPELINE_ADMIN_TOKEN` environment variable takes precedence.
    pub admin_token_file: Option<PathBuf>,
    /// Address of the admin HTTP endpoint (`127.0.0.1:9700`); none by
    /// default.
    pub admin: Option<String>,
    /// Reload a stage when its plugin file (or this config file) changes.
    pub watch: Option<bool>,
    /// Folder of the compile cache; `""` turns it off.
    pub compile_cache: Option<PathBuf>,
    /// Topic of stateful stages' checkpoints (default `<input>-state`).
    pub state_topic: Option<String>,
    /// How often stateful stages' `on-timer` runs, milliseconds.
    pub timer_interval_ms: Option<u64>,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[kafka]`.
    #[serde(default)]
    pub kafka: KafkaFile,
    /// `[input]`.
    #[serde(default)]
    pub input: InputFile,
    /// `[output]`.
    #[serde(default)]
    pub output: TopicFile,
    /// `[dead_letter]`.
    #[serde(default)]
    pub dead_letter: TopicFile,
    /// `[topics]`.
    #[serde(default)]
    pub topics: TopicsFile,
    /// `[group]`.
    #[serde(default)]
    pub group: GroupFile,
    /// `[runtime]`.
    #[serde(default)]
    pub runtime: RuntimeFile,
    /// `[[stage]]`, in chain order.
    #[serde(default)]
    pub stage: Vec<StageFile>,
}

impl FileConfig {
    /// Reads and parses a config file; stage plugin paths are resolved
    /// against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for s in &mut file.stage {
            if s.plugin.is_relative() {
                s.plugin = base.join(&s.plugin);
            }
        }
        Ok(file)
    }
}

/// One configured stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageConfig {
    /// Name.
    pub name: String,
    /// Component file.
    pub plugin: PathBuf,
    /// `init` settings.
    pub config: Vec<(String, String)>,
    /// Sandbox limits.
    pub limits: StageLimits,
    /// What a stage error does to its batch.
    pub on_error: FailurePolicy,
    /// Expected sha256 of the plugin file.
    pub sha256: Option<String>,
    /// Side output name -> topic.
    pub outputs: BTreeMap<String, String>,
}

/// Everything `pipeline-host` needs to run, validated.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Broker connection.
    pub kafka: KafkaSettings,
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Dead-letter topic.
    pub dead_letter: String,
    /// Start position without a committed offset.
    pub start: StartFrom,
    /// Fetch tuning.
    pub fetch: FetchSettings,
    /// Null-value policy.
    pub tombstones: Tombstones,
    /// `Some((partitions, replication))` to create missing topics.
    pub create_topics: Option<(i32, i16)>,
    /// Stages in chain order.
    pub stages: Vec<StageConfig>,
    /// Interval of the statistics log line.
    pub stats_interval: Duration,
    /// How long a clean shutdown may take to flush before giving up.
    pub shutdown_timeout: Duration,
    /// Consumer group membership, if any.
    pub group: Option<GroupSettings>,
    /// Largest batch handed to the stages, in records.
    pub max_batch_records: usize,
    /// Folder of the compile cache, if on.
    pub compile_cache: Option<PathBuf>,
    /// Admin HTTP address, if any.
    pub admin: Option<std::net::SocketAddr>,
    /// Token the admin endpoint requires, if any (never logged).
    pub admin_token: Option<Secret>,
    /// Reload stages when their files change.
    pub watch: bool,
    /// Topic of stateful stages' checkpoints.
    pub state_topic: String,
    /// Interval of stateful stages' `on-timer`.
    pub timer_interval: Duration,
    /// Where this configuration came from, to read it again on reload.
    pub origin: Origin,
}

/// The config file and flags a [`PipelineConfig`] was built from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// `--config`, if given.
    pub file: Option<PathBuf>,
    /// The flags.
    pub overrides: Overrides,
}

/// Command-line values that override the file (all optional).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--bootstrap`.
    pub bootstrap: Option<String>,
    /// `--client-id`.
    pub client_id: Option<String>,
    /// `--tls*` and `--sasl*`.
    pub security: SecurityArgs,
    /// `--input`.
    pub input: Option<String>,
    /// `--output`.
    pub output: Option<String>,
    /// `--dlq`.
    pub dead_letter: Option<String>,
    /// `--start`.
    pub start: Option<StartFrom>,
    /// `--tombstones`.
    pub tombstones: Option<Tombstones>,
    /// `--plugin`, in order (replaces the file's stages when given).
    pub plugins: Vec<PathBuf>,
    /// `--stage-config NAME.KEY=VALUE`.
    pub stage_settings: Vec<String>,
    /// `--create-topics false`.
    pub create_topics: Option<bool>,
    /// `--partitions`.
    pub partitions: Option<i32>,
    /// `--replication-factor`.
    pub replication_factor: Option<i16>,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: Option<u64>,
    /// `--connect-timeout-ms`.
    pub connect_timeout_ms: Option<u64>,
    /// `--stats-interval-ms`.
    pub stats_interval_ms: Option<u64>,
    /// `--shutdown-timeout-ms`.
    pub shutdown_timeout_ms: Option<u64>,
    /// `--fetch-max-bytes`.
    pub fetch_max_bytes: Option<i32>,
    /// `--fetch-max-wait-ms`.
    pub fetch_max_wait_ms: Option<u64>,
    /// `--group`.
    pub group: Option<String>,
    /// `--group-instance-id`.
    pub group_instance_id: Option<String>,
    /// `--session-timeout-ms`.
    pub session_timeout_ms: Option<u64>,
    /// `--rebalance-timeout-ms`.
    pub rebalance_timeout_ms: Option<u64>,
    /// `--heartbeat-interval-ms`.
    pub heartbeat_interval_ms: Option<u64>,
    /// `--commit-interval-ms`.
    pub commit_interval_ms: Option<u64>,
    /// `--assignor`.
    pub assignor: Option<Assignor>,
    /// `--max-batch-records`.
    pub max_batch_records: Option<usize>,
    /// `--compile-cache DIR` (an empty path, from `--no-compile-cache`,
    /// turns it off).
    pub compile_cache: Option<PathBuf>,
    /// `--admin ADDR`.
    pub admin: Option<String>,
    /// `--admin-token-file PATH`.
    pub admin_token_file: Option<PathBuf>,
    /// `--watch true|false`.
    pub watch: Option<bool>,
    /// `--state-topic`.
    pub state_topic: Option<String>,
}

fn value_text(key: &str, v: &toml::Value) -> Result<String, ConfigError> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| value_text(key, i))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => {
            return Err(ConfigError::Invalid(format!(
                "stage setting {key}: a {} cannot be passed to a stage; use a string",
                other.type_str()
            )));
        }
    })
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stage".into())
}

/// The default compile cache: `$XDG_CACHE_HOME/pipeline-host/compiled`, or
/// `~/.cache/pipeline-host/compiled`.
pub fn default_compile_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("pipeline-host").join("compiled"))
}

impl PipelineConfig {
    /// Reads `file` (if any) and merges `cli` over it; the result remembers
    /// both so that [`PipelineConfig::reload`] can read them again.
    pub fn load(file: Option<&Path>, cli: Overrides) -> Result<Self, ConfigError> {
        let parsed = match file {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut config = Self::build(parsed, cli.clone())?;
        config.origin = Origin {
            file: file.map(Path::to_path_buf),
            overrides: cli,
        };
        Ok(config)
    }

    /// Reads the configuration again from where it came from.
    pub fn reload(&self) -> Result<Self, ConfigError> {
        Self::load(self.origin.file.as_deref(), self.origin.overrides.clone())
    }

    /// Merges `file` (may be empty) and `cli` into a validated config.
    pub fn build(file: FileConfig, cli: Overrides) -> Result<Self, ConfigError> {
        let defaults = KafkaSettings::default();
        let bootstrap = match (cli.bootstrap, file.kafka.bootstrap) {
            (Some(b), _) => split_list(&b),
            (None, Some(b)) => b.into_vec(),
            (None, None) => defaults.bootstrap.clone(),
        };
        if bootstrap.is_empty() {
            return Err(ConfigError::Invalid(
                "no bootstrap broker given (--bootstrap host:port)".into(),
            ));
        }
        let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
        let kafka = KafkaSettings {
            bootstrap,
            client_id: cli
                .client_id
                .or(file.kafka.client_id)
                .unwrap_or(defaults.client_id),
            request_timeout: ms(
                cli.request_timeout_ms.or(file.kafka.request_timeout_ms),
                defaults.request_timeout,
            ),
            connect_timeout: ms(
                cli.connect_timeout_ms.or(file.kafka.connect_timeout_ms),
                defaults.connect_timeout,
            ),
            transport: {
                let (tls, sasl) = cli.security.over(file.kafka.tls, file.kafka.sasl);
                crate::kafka::security::transport(tls.as_ref(), sasl.as_ref())?
            },
        };
        let input = cli.input.or(file.input.topic).ok_or_else(|| {
            ConfigError::Invalid("no input topic given (--input or [input] topic)".into())
        })?;
        let output = cli.output.or(file.output.topic).ok_or_else(|| {
            ConfigError::Invalid("no output topic given (--output or [output] topic)".into())
        })?;
        let dead_letter = cli
            .dead_letter
            .or(file.dead_letter.topic)
            .unwrap_or_else(|| format!("{input}-dlq"));
        if input == output || input == dead_letter || output == dead_letter {
            return Err(ConfigError::Invalid(format!(
                "input ({input}), output ({output}) and dead-letter ({dead_letter}) topics must differ"
            )));
        }
        let fetch_defaults = FetchSettings::default();
        let fetch = FetchSettings {
            max_bytes: cli
                .fetch_max_bytes
                .or(file.input.fetch_max_bytes)
                .unwrap_or(fetch_defaults.max_bytes),
            max_wait: ms(
                cli.fetch_max_wait_ms.or(file.input.fetch_max_wait_ms),
                fetch_defaults.max_wait,
            ),
        };
        let create = cli.create_topics.or(file.topics.create).unwrap_or(true);
        let partitions = cli.partitions.or(file.topics.partitions).unwrap_or(3);
        let replication = cli
            .replication_factor
            .or(file.topics.replication_factor)
            .unwrap_or(BROKER_DEFAULT_REPLICATION);
        if partitions < 1 || (replication < 1 && replication != BROKER_DEFAULT_REPLICATION) {
            return Err(ConfigError::Invalid(
                "--partitions must be at least 1, --replication-factor at least 1 (or -1: the broker's default.replication.factor)".into(),
            ));
        }

        let mut stages: Vec<StageConfig> = if cli.plugins.is_empty() {
            file.stage
                .into_iter()
                .map(|s| {
                    let defaults = StageLimits::default();
                    let config = s
                        .config
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), value_text(k, v)?)))
                        .collect::<Result<Vec<_>, ConfigError>>()?;
                    Ok(StageConfig {
                        name: s.name.unwrap_or_else(|| stem(&s.plugin)),
                        limits: StageLimits {
                            memory_bytes: s
                                .memory_mb
                                .map(|m| m << 20)
                                .unwrap_or(defaults.memory_bytes),
                            time_budget: ms(s.time_budget_ms, defaults.time_budget),
                            stack_bytes: s
                                .stack_kb
                                .map(|k| k << 10)
                                .unwrap_or(defaults.stack_bytes),
                        },
                        plugin: s.plugin,
                        config,
                        on_error: s.on_error.unwrap_or_default(),
                        sha256: s.sha256,
                        outputs: s.outputs,
                    })
                })
                .collect::<Result<_, ConfigError>>()?
        } else {
            cli.plugins
                .iter()
                .map(|p| StageConfig {
                    name: stem(p),
                    plugin: p.clone(),
                    config: Vec::new(),
                    limits: StageLimits::default(),
                    on_error: FailurePolicy::default(),
                    sha256: None,
                    outputs: BTreeMap::new(),
                })
                .collect()
        };
        if stages.is_empty() {
            return Err(ConfigError::Invalid(
                "no stage configured: give --plugin FILE (repeatable) or [[stage]] entries".into(),
            ));
        }
        for (i, s) in stages.iter().enumerate() {
            if stages[..i].iter().any(|o| o.name == s.name) {
                return Err(ConfigError::Invalid(format!(
                    "two stages are named {}; give them distinct names",
                    s.name
                )));
            }
        }
        for setting in &cli.stage_settings {
            let (target, value) = setting.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--stage-config {setting}: expected STAGE.KEY=VALUE"
                ))
            })?;
            let (stage, key) = target.split_once('.').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--stage-config {setting}: expected STAGE.KEY=VALUE"
                ))
            })?;
            let s = stages.iter_mut().find(|s| s.name == stage).ok_or_else(|| {
                ConfigError::Invalid(format!("--stage-config {setting}: no stage named {stage}"))
            })?;
            s.config.retain(|(k, _)| k != key);
            s.config.push((key.into(), value.into()));
        }
        let compile_cache = match cli.compile_cache.or(file.runtime.compile_cache) {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir),
            None => default_compile_cache(),
        };
        let admin = match cli.admin.or(file.runtime.admin) {
            None => None,
            Some(a) => Some(a.parse().map_err(|e| {
                ConfigError::Invalid(format!(
                    "admin address {a}: {e}; expected IP:PORT such as 127.0.0.1:9700"
                ))
            })?),
        };
        let admin_token = secret::from_env_or_file(
            "admin token",
            "PIPELINE_ADMIN_TOKEN",
            cli.admin_token_file
                .or(file.runtime.admin_token_file)
                .as_deref(),
        )?;
        let state_topic = cli
            .state_topic
            .or(file.runtime.state_topic)
            .unwrap_or_else(|| format!("{input}-state"));
        for s in &stages {
            for (name, topic) in &s.outputs {
                if [&input, &output, &dead_letter, &state_topic].contains(&topic) {
                    return Err(ConfigError::Invalid(format!(
                        "stage {}: side output {name} goes to {topic}, which the pipeline already uses; give it its own topic",
                        s.name
                    )));
                }
            }
        }
        let group = cli.group.or(file.group.id).map(|id| {
            let d = GroupSettings::new(&id);
            let session_timeout = ms(
                cli.session_timeout_ms.or(file.group.session_timeout_ms),
                d.session_timeout,
            );
            GroupSettings {
                instance_id: cli.group_instance_id.or(file.group.instance_id),
                session_timeout,
                rebalance_timeout: ms(
                    cli.rebalance_timeout_ms.or(file.group.rebalance_timeout_ms),
                    d.rebalance_timeout,
                ),
                heartbeat_interval: ms(
                    cli.heartbeat_interval_ms
                        .or(file.group.heartbeat_interval_ms),
                    (session_timeout / 3).min(d.heartbeat_interval),
                ),
                commit_interval: ms(
                    cli.commit_interval_ms.or(file.group.commit_interval_ms),
                    d.commit_interval,
                ),
                assignor: cli.assignor.or(file.group.assignor).unwrap_or_default(),
                ..d
            }
        });
        if let Some(g) = &group
            && g.heartbeat_interval >= g.session_timeout
        {
            return Err(ConfigError::Invalid(format!(
                "heartbeat interval {:?} must be below the session timeout {:?}",
                g.heartbeat_interval, g.session_timeout
            )));
        }
        Ok(Self {
            max_batch_records: cli
                .max_batch_records
                .or(file.input.max_batch_records)
                .unwrap_or(1000)
                .max(1),
            group,
            kafka,
            input,
            output,
            dead_letter,
            start: cli.start.or(file.input.start).unwrap_or_default(),
            fetch,
            tombstones: cli.tombstones.or(file.input.tombstones).unwrap_or_default(),
            create_topics: create.then_some((partitions, replication)),
            stages,
            stats_interval: ms(cli.stats_interval_ms, Duration::from_secs(10)),
            shutdown_timeout: ms(cli.shutdown_timeout_ms, Duration::from_secs(30)),
            compile_cache,
            admin,
            admin_token,
            watch: cli.watch.or(file.runtime.watch).unwrap_or(true),
            state_topic,
            timer_interval: ms(file.runtime.timer_interval_ms, Duration::from_secs(1)),
            origin: Origin::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.example.toml");
        let file = FileConfig::load(&path).unwrap();
        let cfg = PipelineConfig::build(file, Overrides::default()).unwrap();
        assert_eq!(cfg.input, "user-login");
        assert_eq!(cfg.dead_letter, "user-login-dlq");
        assert_eq!(
            cfg.group.as_ref().map(|g| g.group.as_str()),
            Some("pipeline")
        );
        let names: Vec<_> = cfg.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "android_filter",
                "enrich",
                "categorize",
                "anomaly",
                "version_counts"
            ]
        );
        let anomaly = &cfg.stages[3];
        assert_eq!(
            anomaly.config,
            [("suspicious_locales".to_string(), "RU,KP,IR".to_string())]
        );
        assert_eq!(anomaly.limits.memory_bytes, 32 << 20);
        let counts = &cfg.stages[4];
        assert_eq!(counts.outputs["counts"], "app-version-counts");
        assert_eq!(cfg.state_topic, "user-login-state");
        assert!(cfg.watch);
    }

    /// The configuration embedded in the Kubernetes ConfigMap is one this
    /// host accepts.
    #[test]
    fn the_kubernetes_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml");
        let yaml = std::fs::read_to_string(path).unwrap();
        let toml_text: String = yaml
            .split_once("pipeline.toml: |\n")
            .expect("the pipeline.toml key")
            .1
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let file: FileConfig = toml::from_str(&toml_text).unwrap();
        let cfg = PipelineConfig::build(file, Overrides::default()).unwrap();
        assert_eq!(cfg.stages.len(), 5);
        assert_eq!(
            cfg.group.as_ref().map(|g| g.group.as_str()),
            Some("pipeline")
        );
        assert_eq!(cfg.admin, Some("0.0.0.0:9700".parse().unwrap()));
    }

    #[test]
    fn stage_policies_pins_and_outputs_are_read_and_checked() {
        let file: FileConfig = toml::from_str(
            r#"
[input]
topic = "in"
[output]
topic = "out"
[runtime]
admin = "127.0.0.1:9700"
compile_cache = ""
[[stage]]
plugin = "x.wasm"
on_error = "stop"
stack_kb = 128
sha256 = "ab"
outputs = { counts = "c" }
"#,
        )
        .unwrap();
        let cfg = PipelineConfig::build(file, Overrides::default()).unwrap();
        let s = &cfg.stages[0];
        assert_eq!(s.on_error, FailurePolicy::Stop);
        assert_eq!(s.limits.stack_bytes, 128 << 10);
        assert_eq!(s.sha256.as_deref(), Some("ab"));
        assert_eq!(cfg.compile_cache, None, "an empty path turns the cache off");
        assert_eq!(cfg.admin, Some("127.0.0.1:9700".parse().unwrap()));

        let clash: FileConfig = toml::from_str(
            "[input]\ntopic = \"in\"\n[output]\ntopic = \"out\"\n[[stage]]\nplugin = \"x.wasm\"\noutputs = { counts = \"out\" }\n",
        )
        .unwrap();
        let err = PipelineConfig::build(clash, Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("already uses"), "{err}");
        let bad =
            toml::from_str::<FileConfig>("[[stage]]\nplugin = \"x.wasm\"\non_error = \"retry\"\n");
        assert!(
            bad.is_err_and(|e| e.to_string().contains("retry")),
            "unknown policies are refused"
        );
    }

    #[test]
    fn flags_override_and_validate() {
        let cli = Overrides {
            input: Some("in".into()),
            output: Some("out".into()),
            plugins: vec!["a/x.wasm".into(), "b/y.wasm".into()],
            stage_settings: vec!["y.k=v".into()],
            ..Default::default()
        };
        let cfg = PipelineConfig::build(FileConfig::default(), cli.clone()).unwrap();
        assert_eq!(cfg.stages[1].config, [("k".into(), "v".into())]);
        assert_eq!(cfg.dead_letter, "in-dlq");
        let bad = Overrides {
            stage_settings: vec!["zz.k=v".into()],
            ..cli.clone()
        };
        assert!(
            PipelineConfig::build(FileConfig::default(), bad)
                .unwrap_err()
                .to_string()
                .contains("no stage named zz")
        );
        let same = Overrides {
            output: Some("in".into()),
            ..cli
        };
        assert!(PipelineConfig::build(FileConfig::default(), same).is_err());
    }
}
