//! Configuration: a TOML file (`--config pipeline.toml`) and command-line
//! flags merged into one validated [`PipelineConfig`]. Flags win over the
//! file. See `README.md` ("Configuration reference") and
//! `host/pipeline.example.toml`.

mod settings;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use settings::{Guarantee, KafkaArgs, OutputArgs, Settings, Sources, StageFile, StringOrList};

use crate::format::FormatConfig;
use crate::format::registry::{Auth, RegistrySettings};
use crate::group::{Assignor, GroupProtocol, GroupSettings};
use crate::kafka::KafkaSettings;
use crate::kafka::security::{SecurityError, TlsOptions};
use crate::secret::{self, Secret, SecretError};
use crate::sink::Codec;
use crate::sink::dead_letter::DeadLetterTopics;
use crate::source::inputs::Inputs;
use crate::source::{FetchSettings, StartFrom};
use crate::stages::{
    DEFAULT_ROUTE, FailurePolicy, MAX_ROUTES, MAX_STAGE_STACK, RouteTable, STAGE_THREAD_STACK,
    StageLimits, Tombstones,
};

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

/// One configured stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageConfig {
    /// Name in logs, metrics and dead-letter headers (unique in the chain).
    pub name: String,
    /// The component file (`.wasm` or `.wat`).
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

/// Exactly-once delivery's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// This process's transactional id.
    pub transactional_id: String,
    /// The broker aborts a transaction left open this long.
    pub transaction_timeout: Duration,
}

impl ExactlyOnce {
    /// The settings of `args` for a member of `group`: the transactional id
    /// given, else `<group>-<instance id>` for a static member (a restart
    /// fences its previous incarnation and aborts what it left open), else
    /// one of this process alone.
    fn of(args: &OutputArgs, group: &GroupSettings) -> Self {
        let transactional_id =
            args.transactional_id
                .clone()
                .unwrap_or_else(|| match &group.instance_id {
                    Some(instance) => format!("{}-{instance}", group.group),
                    None => {
                        let started = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_micros();
                        format!("{}-{}-{started:x}", group.group, std::process::id())
                    }
                });
        Self {
            transactional_id,
            transaction_timeout: ms(args.transaction_timeout_ms, Duration::from_secs(60)),
        }
    }
}

/// Everything `pipeline-host` needs to run, validated.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Broker connection.
    pub kafka: KafkaSettings,
    /// Input topics: names and a pattern.
    pub inputs: Inputs,
    /// Output topic.
    pub output: String,
    /// The routes stages may send records to (route 0: the output topic).
    pub routes: RouteTable,
    /// Dead-letter topics: each input's own, or one.
    pub dead_letter: DeadLetterTopics,
    /// Compression of output, side-output and state batches.
    pub output_compression: Codec,
    /// Compression of dead-letter batches.
    pub dead_letter_compression: Codec,
    /// At-least-once writes with an idempotent producer.
    pub idempotence: bool,
    /// Start position without a committed offset.
    pub start: StartFrom,
    /// Fetch tuning.
    pub fetch: FetchSettings,
    /// Most bytes one fetch's compressed batches may inflate to.
    pub max_inflated_bytes: usize,
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
    /// The share group read as, if any (instead of a consumer group).
    pub share_group: Option<String>,
    /// The transactional producer, with exactly-once delivery.
    pub exactly_once: Option<ExactlyOnce>,
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
    /// Stop once every partition is read up to the end it had at start.
    pub until_end: bool,
    /// How often the cluster's topics are listed to find new input topics
    /// and partitions.
    pub metadata_refresh: Duration,
    /// Value and key formats at the edges, and the schema registry.
    pub formats: FormatConfig,
    /// Where this configuration came from, to read it again on reload.
    pub origin: Sources,
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

impl KafkaArgs {
    /// The broker connection these settings describe, defaults filled in.
    pub(crate) fn settings(&self) -> Result<KafkaSettings, ConfigError> {
        let defaults = KafkaSettings::default();
        let bootstrap = match &self.bootstrap {
            Some(b) => b.to_vec(),
            None => defaults.bootstrap.clone(),
        };
        if bootstrap.is_empty() {
            return Err(ConfigError::Invalid(
                "no bootstrap broker given (--bootstrap host:port)".into(),
            ));
        }
        Ok(KafkaSettings {
            bootstrap,
            client_id: self.client_id.clone().unwrap_or(defaults.client_id),
            request_timeout: ms(self.request_timeout_ms, defaults.request_timeout),
            connect_timeout: ms(self.connect_timeout_ms, defaults.connect_timeout),
            transport: crate::kafka::security::transport(Some(&self.tls), Some(&self.sasl))?,
        })
    }
}

/// The formats of `s`, with their schema files read and the registry
/// settings checked: a format other than json needs a registry URL.
fn formats(s: &Settings) -> Result<FormatConfig, ConfigError> {
    let read = |flag: &str, path: &Option<PathBuf>| -> Result<Option<String>, ConfigError> {
        path.as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::Invalid(format!("{flag} {}: {e}", p.display())))
            })
            .transpose()
    };
    let (i, o, r) = (&s.input, &s.output, &s.registry);
    let config = FormatConfig {
        input_value: i.input_format.unwrap_or_default(),
        input_key: i.input_key_format.unwrap_or_default(),
        reader_schema: read("--input-reader-schema", &i.input_reader_schema)?,
        output_value: o.output_format.unwrap_or_default(),
        output_key: o.output_key_format.unwrap_or_default(),
        value_schema: read("--output-schema", &o.output_schema)?,
        key_schema: read("--output-key-schema", &o.output_key_schema)?,
        subject_strategy: o.subject_strategy.unwrap_or_default(),
        auto_register: o.auto_register.unwrap_or(true),
        schema_refresh: ms(o.schema_refresh_ms, Duration::from_secs(60)),
        registry: None,
        cache_size: r.registry_cache_size.unwrap_or(1000).max(1),
    };
    let Some(url) = &r.registry_url else {
        if config.framed() {
            return Err(ConfigError::Invalid(
                "a format other than json needs a schema registry: give --registry-url (or [registry] url)".into(),
            ));
        }
        return Ok(config);
    };
    let password = secret::from_env_or_file(
        "registry password",
        "PIPELINE_REGISTRY_PASSWORD",
        r.registry_password_file.as_deref(),
    )?;
    let token = secret::from_env_or_file(
        "registry token",
        "PIPELINE_REGISTRY_TOKEN",
        r.registry_token_file.as_deref(),
    )?;
    let auth = match (&r.registry_user, password, token) {
        (Some(user), Some(password), None) => Some(Auth::Basic {
            user: user.clone(),
            password,
        }),
        (None, None, Some(token)) => Some(Auth::Bearer(token)),
        (None, None, None) => None,
        _ => {
            return Err(ConfigError::Invalid(
                "schema registry credentials: give either --registry-user with a password (--registry-password-file or PIPELINE_REGISTRY_PASSWORD), or a bearer token (--registry-token-file or PIPELINE_REGISTRY_TOKEN)".into(),
            ));
        }
    };
    Ok(FormatConfig {
        registry: Some(RegistrySettings {
            url: url.clone(),
            auth,
            timeout: ms(r.registry_timeout_ms, Duration::from_secs(10)),
            tls: TlsOptions {
                enabled: url.starts_with("https://"),
                ca_file: r.registry_ca_file.clone(),
                cert_file: None,
                key_file: None,
            },
        }),
        ..config
    })
}

/// A setting in milliseconds, or its default.
/// Exactly-once: refuses a configuration in which a transaction can stay
/// open longer than its timeout without anything going wrong, which makes
/// the coordinator abort it (the pipeline then goes on from the committed
/// offsets, but repeats the work). A transaction is open from a delivery
/// until the next commit (the commit interval), and its offsets' commit may
/// retry for half the timeout; with the cooperative-sticky assignor,
/// partitions keep delivering while the group rebalances, with no commit,
/// for up to the rebalance timeout. (With the eager range assignor every
/// partition stops and commits before the group rebalances.)
fn stalls_fit_transaction(g: &GroupSettings, timeout: Duration) -> Result<(), ConfigError> {
    if g.commit_interval > timeout / 2 {
        return Err(ConfigError::Invalid(format!(
            "exactly-once: the commit interval {:?} must be at most half the transaction timeout {timeout:?}: a transaction stays open for up to the commit interval and its commit may retry for half the timeout; lower --commit-interval-ms or raise --transaction-timeout-ms",
            g.commit_interval
        )));
    }
    let rebalance = g.rebalance_timeout + g.commit_interval;
    if g.assignor == Assignor::CooperativeSticky && rebalance >= timeout {
        return Err(ConfigError::Invalid(format!(
            "exactly-once with the cooperative-sticky assignor: a rebalance may keep a transaction open for the rebalance timeout {:?} plus the commit interval {:?}, which reaches the transaction timeout {timeout:?}; raise --transaction-timeout-ms above {rebalance:?} or lower --rebalance-timeout-ms",
            g.rebalance_timeout, g.commit_interval
        )));
    }
    Ok(())
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map(Duration::from_millis).unwrap_or(default)
}

impl PipelineConfig {
    /// Reads the file of `sources` (if any) and lays its flags over it; the
    /// result remembers `sources` so that [`PipelineConfig::reload`] can
    /// read them again.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let file = match &sources.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        let settings = sources.settings.over(&file)?;
        let mut config = Self::build(settings, &sources.plugins, &sources.stage_config)?;
        config.origin = sources.clone();
        Ok(config)
    }

    /// Reads the configuration again from where it came from.
    pub fn reload(&self) -> Result<Self, ConfigError> {
        Self::load(&self.origin)
    }

    /// Validates `s` and fills in the defaults. `plugins` (the `--plugin`
    /// flags) replace the file's stages when given; `stage_settings` are
    /// the `--stage-config STAGE.KEY=VALUE` flags.
    pub fn build(
        s: Settings,
        plugins: &[PathBuf],
        stage_settings: &[String],
    ) -> Result<Self, ConfigError> {
        let kafka = s.kafka.settings()?;
        let formats = formats(&s)?;
        let names = s
            .input
            .input
            .as_ref()
            .map(|l| l.to_vec())
            .unwrap_or_default();
        let inputs = Inputs::new(names.clone(), s.input.input_pattern.as_deref())
            .map_err(ConfigError::Invalid)?;
        let output = s.output.output.clone().ok_or_else(|| {
            ConfigError::Invalid("no output topic given (--output or [output] topic)".into())
        })?;
        let dead_letter = match s.dead_letter.dlq {
            Some(t) => DeadLetterTopics::One(t),
            None => DeadLetterTopics::PerInput,
        };
        for input in &names {
            let dlq = dead_letter.of(input);
            if *input == output
                || *input == *dlq
                || output == *dlq
                || names.contains(&dlq.to_string())
            {
                return Err(ConfigError::Invalid(format!(
                    "input ({input}), output ({output}) and dead-letter ({dlq}) topics must differ"
                )));
            }
        }
        if let DeadLetterTopics::One(dlq) = &dead_letter
            && *dlq == output
        {
            return Err(ConfigError::Invalid(format!(
                "output ({output}) and dead-letter ({dlq}) topics must differ"
            )));
        }
        let fetch_defaults = FetchSettings::default();
        let fetch = FetchSettings {
            max_bytes: s.input.fetch_max_bytes.unwrap_or(fetch_defaults.max_bytes),
            max_wait: ms(s.input.fetch_max_wait_ms, fetch_defaults.max_wait),
        };
        let create = s.topics.create_topics.unwrap_or(true);
        let partitions = s.topics.partitions.unwrap_or(3);
        let replication = s
            .topics
            .replication_factor
            .unwrap_or(BROKER_DEFAULT_REPLICATION);
        if partitions < 1 || (replication < 1 && replication != BROKER_DEFAULT_REPLICATION) {
            return Err(ConfigError::Invalid(
                "--partitions must be at least 1, --replication-factor at least 1 (or -1: the broker's default.replication.factor)".into(),
            ));
        }
        let mut stages = if plugins.is_empty() {
            s.stage
                .into_iter()
                .map(StageConfig::from_file)
                .collect::<Result<Vec<_>, ConfigError>>()?
        } else {
            plugins.iter().map(|p| StageConfig::from_flag(p)).collect()
        };
        if stages.is_empty() {
            return Err(ConfigError::Invalid(
                "no stage configured: give --plugin FILE (repeatable) or [[stage]] entries".into(),
            ));
        }
        for (i, st) in stages.iter().enumerate() {
            if stages[..i].iter().any(|o| o.name == st.name) {
                return Err(ConfigError::Invalid(format!(
                    "two stages are named {}; give them distinct names",
                    st.name
                )));
            }
        }
        for setting in stage_settings {
            apply_stage_setting(&mut stages, setting)?;
        }
        let compile_cache = match s.runtime.compile_cache {
            _ if s.runtime.no_compile_cache => None,
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir),
            None => default_compile_cache(),
        };
        let admin = match s.runtime.admin {
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
            s.runtime.admin_token_file.as_deref(),
        )?;
        // Named after the first input, or the group when only a pattern
        // names the inputs.
        let state_topic = s.runtime.state_topic.unwrap_or_else(|| {
            let base = names
                .first()
                .or(s.group.group.as_ref())
                .map_or("pipeline", String::as_str);
            format!("{base}-state")
        });
        let fixed_dlq = match &dead_letter {
            DeadLetterTopics::One(t) => t.clone(),
            DeadLetterTopics::PerInput => String::new(),
        };
        let written_here = |topic: &String| {
            names.contains(topic)
                || [&output, &fixed_dlq, &state_topic].contains(&topic)
                || names.iter().any(|i| *dead_letter.of(i) == **topic)
        };
        for st in &stages {
            for (name, topic) in &st.outputs {
                if written_here(topic) {
                    return Err(ConfigError::Invalid(format!(
                        "stage {}: side output {name} goes to {topic}, which the pipeline already uses; give it its own topic",
                        st.name
                    )));
                }
            }
        }
        let mut taken: Vec<String> = names.clone();
        taken.extend(names.iter().map(|i| dead_letter.of(i).into_owned()));
        taken.extend([fixed_dlq.clone(), state_topic.clone()]);
        taken.retain(|t| !t.is_empty());
        let routes = route_table(
            &output,
            &s.output.routes,
            &taken.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        let written = stages
            .iter()
            .flat_map(|st| st.outputs.values().cloned())
            .chain(routes.topics().map(str::to_owned))
            .chain([output.clone(), fixed_dlq, state_topic.clone()]);
        let inputs = inputs.excluding(written, dead_letter == DeadLetterTopics::PerInput);
        let exactly = s.output.guarantee.unwrap_or_default() == Guarantee::ExactlyOnce;
        let mut group = s.group.group.as_deref().map(|id| {
            let d = GroupSettings::new(id);
            // One transaction per commit: with exactly-once, a 100 ms
            // default keeps transactions few (Kafka Streams' default too).
            let commit_interval = if exactly {
                Duration::from_millis(100)
            } else {
                d.commit_interval
            };
            let session_timeout = ms(s.group.session_timeout_ms, d.session_timeout);
            GroupSettings {
                instance_id: s.group.group_instance_id.clone(),
                session_timeout,
                rebalance_timeout: ms(s.group.rebalance_timeout_ms, d.rebalance_timeout),
                heartbeat_interval: ms(
                    s.group.heartbeat_interval_ms,
                    (session_timeout / 3).min(d.heartbeat_interval),
                ),
                commit_interval: ms(s.group.commit_interval_ms, commit_interval),
                assignor: s.group.assignor.unwrap_or_default(),
                protocol: s.group.group_protocol.unwrap_or_default(),
                server_assignor: s.group.server_assignor.clone(),
                ..d
            }
        });
        if let Some(g) = &mut group {
            g.classic_by = protocol_fits(g.protocol, &s.group)?;
        }
        if let Some(share) = &s.group.share_group {
            share_fits(share, &s.group, s.input.until_end, exactly)?;
        }
        if let Some(g) = &group
            && g.heartbeat_interval >= g.session_timeout
        {
            return Err(ConfigError::Invalid(format!(
                "heartbeat interval {:?} must be below the session timeout {:?}",
                g.heartbeat_interval, g.session_timeout
            )));
        }
        let exactly_once = match &group {
            Some(g) if exactly => Some(ExactlyOnce::of(&s.output, g)),
            None if exactly => {
                return Err(ConfigError::Invalid(
                    "--guarantee exactly-once needs a consumer group (--group): the input offsets are committed in each transaction".into(),
                ));
            }
            _ => None,
        };
        if let (Some(g), Some(eo)) = (&group, &exactly_once) {
            stalls_fit_transaction(g, eo.transaction_timeout)?;
        }
        Ok(Self {
            max_batch_records: s.input.max_batch_records.unwrap_or(1000).max(1),
            exactly_once,
            group,
            share_group: s.group.share_group.clone(),
            kafka,
            inputs,
            routes,
            output,
            dead_letter,
            output_compression: s.output.output_compression.unwrap_or(Codec::None),
            dead_letter_compression: s.dead_letter.dead_letter_compression.unwrap_or(Codec::Zstd),
            idempotence: s.output.idempotence.unwrap_or(true),
            start: s.input.start.unwrap_or_default(),
            fetch,
            max_inflated_bytes: s
                .input
                .max_inflated_bytes
                .unwrap_or(rskafka::record::DEFAULT_INFLATION_LIMIT),
            tombstones: s.input.tombstones.unwrap_or_default(),
            create_topics: create.then_some((partitions, replication)),
            stages,
            stats_interval: ms(s.runtime.stats_interval_ms, Duration::from_secs(10)),
            shutdown_timeout: ms(s.runtime.shutdown_timeout_ms, Duration::from_secs(30)),
            compile_cache,
            admin,
            admin_token,
            watch: s.runtime.watch.unwrap_or(true),
            state_topic,
            timer_interval: ms(s.runtime.timer_interval_ms, Duration::from_secs(1)),
            until_end: s.input.until_end,
            metadata_refresh: ms(s.input.metadata_refresh_ms, Duration::from_secs(30)),
            formats,
            origin: Sources::default(),
        })
    }
}

impl StageConfig {
    /// A `[[stage]]` entry, defaults filled in.
    fn from_file(s: StageFile) -> Result<Self, ConfigError> {
        let defaults = StageLimits::default();
        let config = s
            .config
            .iter()
            .map(|(k, v)| Ok((k.clone(), value_text(k, v)?)))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let name = s.name.unwrap_or_else(|| stem(&s.plugin));
        let memory_bytes = match s.memory_mb {
            None => defaults.memory_bytes,
            Some(m @ 1..=65_536) => m << 20,
            Some(m) => {
                return Err(ConfigError::Invalid(format!(
                    "stage {name}: memory_mb = {m}: must be 1 to 65536"
                )));
            }
        };
        let most_kb = MAX_STAGE_STACK >> 10;
        let stack_bytes = match s.stack_kb {
            None => defaults.stack_bytes,
            Some(k) if (64..=most_kb).contains(&k) => k << 10,
            Some(k) => {
                return Err(ConfigError::Invalid(format!(
                    "stage {name}: stack_kb = {k}: must be 64 to {most_kb} (the host threads that run stages have {} KiB of stack, and keep half for the host)",
                    STAGE_THREAD_STACK >> 10
                )));
            }
        };
        Ok(StageConfig {
            name,
            limits: StageLimits {
                memory_bytes,
                time_budget: ms(s.time_budget_ms, defaults.time_budget),
                stack_bytes,
            },
            plugin: s.plugin,
            config,
            on_error: s.on_error.unwrap_or_default(),
            sha256: s.sha256,
            outputs: s.outputs,
        })
    }

    /// A `--plugin FILE` stage: named after the file, default limits.
    fn from_flag(plugin: &Path) -> Self {
        StageConfig {
            name: stem(plugin),
            plugin: plugin.to_path_buf(),
            config: Vec::new(),
            limits: StageLimits::default(),
            on_error: FailurePolicy::default(),
            sha256: None,
            outputs: BTreeMap::new(),
        }
    }
}

/// Applies one `--stage-config STAGE.KEY=VALUE`: replaces the key's value
/// in that stage's settings.
fn apply_stage_setting(stages: &mut [StageConfig], setting: &str) -> Result<(), ConfigError> {
    let malformed = || {
        ConfigError::Invalid(format!(
            "--stage-config {setting}: expected STAGE.KEY=VALUE"
        ))
    };
    let (target, value) = setting.split_once('=').ok_or_else(malformed)?;
    let (stage, key) = target.split_once('.').ok_or_else(malformed)?;
    let s = stages.iter_mut().find(|s| s.name == stage).ok_or_else(|| {
        ConfigError::Invalid(format!("--stage-config {setting}: no stage named {stage}"))
    })?;
    s.config.retain(|(k, _)| k != key);
    s.config.push((key.into(), value.into()));
    Ok(())
}

/// The route table of `[output] routes`: names unique, not `default`, at
/// most [`MAX_ROUTES`] with it, and no route to a topic the pipeline reads
/// or keeps for itself (`reserved`).
fn route_table(
    output: &str,
    pairs: &[(String, String)],
    reserved: &[&str],
) -> Result<RouteTable, ConfigError> {
    let mut mapped = BTreeMap::new();
    for (name, topic) in pairs {
        if name == DEFAULT_ROUTE {
            return Err(ConfigError::Invalid(format!(
                "route {DEFAULT_ROUTE} is the output topic ({output}); set --output instead"
            )));
        }
        if reserved.contains(&topic.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "route {name} goes to {topic}, which the pipeline reads or keeps for itself; give it its own topic"
            )));
        }
        if mapped.insert(name.clone(), topic.clone()).is_some() {
            return Err(ConfigError::Invalid(format!(
                "route {name} is mapped twice"
            )));
        }
    }
    if mapped.len() + 1 > MAX_ROUTES {
        return Err(ConfigError::Invalid(format!(
            "{} routes are mapped; at most {} fit",
            mapped.len(),
            MAX_ROUTES - 1
        )));
    }
    Ok(RouteTable::new(output, &mapped))
}

/// Refuses what a share group cannot do. Kafka has no transactional
/// acknowledgement, so exactly-once needs a consumer group; a share group
/// hands records out with no end to read up to; and the consumer group
/// settings mean nothing to it.
fn share_fits(
    share: &str,
    g: &settings::GroupArgs,
    until_end: bool,
    exactly: bool,
) -> Result<(), ConfigError> {
    if share.trim().is_empty() {
        return Err(ConfigError::Invalid(
            "--share-group: empty; name the share group".into(),
        ));
    }
    if exactly {
        return Err(ConfigError::Invalid(format!(
            "--guarantee exactly-once cannot read share group {share}: a share group acknowledges records one by one and Kafka offers no way to acknowledge them inside a transaction (KIP-932), so a crash between the output and the acknowledgement delivers a record again. Use a consumer group (--group) for exactly-once, or at-least-once with the share group"
        )));
    }
    if until_end {
        return Err(ConfigError::Invalid(format!(
            "--until-end cannot be used with share group {share}: the broker hands records out to the group's members, so no member has an end to read up to"
        )));
    }
    let consumer_only = [
        ("--group", g.group.is_some()),
        ("--group-instance-id", g.group_instance_id.is_some()),
        ("--session-timeout-ms", g.session_timeout_ms.is_some()),
        ("--rebalance-timeout-ms", g.rebalance_timeout_ms.is_some()),
        ("--heartbeat-interval-ms", g.heartbeat_interval_ms.is_some()),
        ("--commit-interval-ms", g.commit_interval_ms.is_some()),
        ("--assignor", g.assignor.is_some()),
        ("--group-protocol", g.group_protocol.is_some()),
        ("--server-assignor", g.server_assignor.is_some()),
    ];
    if let Some((flag, _)) = consumer_only.iter().find(|(_, set)| *set) {
        return Err(ConfigError::Invalid(format!(
            "{flag} does not apply to share group {share}: it is a consumer group setting (the broker's group.share.* settings govern share groups); leave it unset, or use --group instead of --share-group"
        )));
    }
    Ok(())
}

/// Checks the group settings against the chosen protocol and returns the
/// classic-only setting that makes `auto` choose classic, if one is given.
///
/// Under `consumer` the broker owns the session timeout, heartbeat
/// interval and assignment: setting them is refused, as librdkafka does,
/// instead of ignored. Under `auto` (the default) they choose classic, so
/// a configuration written for the classic protocol keeps it; with the
/// broker's assignor set as well, the settings contradict each other and
/// are refused. The broker's assignor means nothing to `classic`.
fn protocol_fits(
    protocol: GroupProtocol,
    g: &settings::GroupArgs,
) -> Result<Option<&'static str>, ConfigError> {
    let classic_only = [
        (
            "--session-timeout-ms",
            g.session_timeout_ms.is_some(),
            "the broker's group.consumer.session.timeout.ms",
        ),
        (
            "--heartbeat-interval-ms",
            g.heartbeat_interval_ms.is_some(),
            "the broker's group.consumer.heartbeat.interval.ms",
        ),
        (
            "--assignor",
            g.assignor.is_some(),
            "the broker's assignor (--server-assignor)",
        ),
    ];
    let classic_set = classic_only.iter().find(|(_, set, _)| *set);
    if let Some(a) = &g.server_assignor
        && !matches!(a.as_str(), "uniform" | "range")
    {
        return Err(ConfigError::Invalid(format!(
            "--server-assignor {a}: Kafka's brokers offer uniform and range"
        )));
    }
    match (protocol, classic_set) {
        (GroupProtocol::Consumer, Some((flag, _, decides))) => Err(ConfigError::Invalid(format!(
            "{flag} does not apply to --group-protocol consumer: under the consumer protocol {decides} decides; leave it unset, or choose --group-protocol classic"
        ))),
        (GroupProtocol::Auto, Some((flag, _, _))) if g.server_assignor.is_some() => {
            Err(ConfigError::Invalid(format!(
                "{flag} (classic protocol) and --server-assignor (consumer protocol) are both set: choose one protocol with --group-protocol and leave the other's settings unset"
            )))
        }
        (GroupProtocol::Classic, _) if g.server_assignor.is_some() => Err(ConfigError::Invalid(
            "--server-assignor applies to the consumer protocol only: add --group-protocol consumer (or auto), or use --assignor with the classic protocol".into(),
        )),
        (GroupProtocol::Auto, Some((flag, _, _))) => Ok(Some(flag)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::security::SaslMechanism;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.example.toml");
        let file = Settings::load(&path).unwrap();
        let cfg = PipelineConfig::build(file, &[], &[]).unwrap();
        assert_eq!(cfg.inputs.names(), ["user-login"]);
        assert_eq!(cfg.dead_letter.of("user-login"), "user-login-dlq");
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
                "router",
                "version_counts"
            ]
        );
        let routes: Vec<_> = cfg.routes.iter().collect();
        assert_eq!(
            routes,
            [
                (0, "default", "processed-user-login"),
                (1, "suspicious", "suspicious-logins")
            ]
        );
        let anomaly = &cfg.stages[3];
        assert_eq!(
            anomaly.config,
            [("suspicious_locales".to_string(), "RU,KP,IR".to_string())]
        );
        assert_eq!(anomaly.limits.memory_bytes, 32 << 20);
        let counts = &cfg.stages[5];
        assert_eq!(counts.outputs["counts"], "app-version-counts");
        assert_eq!(cfg.state_topic, "user-login-state");
        assert!(cfg.watch);
    }

    /// Exactly-once refuses commit intervals and cooperative rebalances
    /// that can outlast the transaction timeout, and accepts the defaults.
    #[test]
    fn transaction_stalls_must_fit_the_transaction_timeout() {
        let build = |extra: &[&str]| {
            let mut args = MINIMAL.to_vec();
            args.extend_from_slice(&["--group", "g", "--guarantee", "exactly-once"]);
            args.extend_from_slice(extra);
            PipelineConfig::load(&flags(&args))
        };
        assert!(build(&[]).is_ok());
        assert!(build(&["--assignor", "cooperative-sticky"]).is_ok());
        assert!(build(&["--transaction-timeout-ms", "10000"]).is_ok());
        let slow_commits = build(&["--commit-interval-ms", "40000"]).unwrap_err();
        assert!(
            slow_commits.to_string().contains("commit interval"),
            "{slow_commits}"
        );
        let cooperative = build(&[
            "--assignor",
            "cooperative-sticky",
            "--transaction-timeout-ms",
            "10000",
        ])
        .unwrap_err();
        assert!(
            cooperative.to_string().contains("rebalance timeout"),
            "{cooperative}"
        );
        assert!(
            build(&[
                "--assignor",
                "cooperative-sticky",
                "--transaction-timeout-ms",
                "10000",
                "--rebalance-timeout-ms",
                "8000",
            ])
            .is_ok()
        );
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
        let file: Settings = toml::from_str(&toml_text).unwrap();
        let cfg = PipelineConfig::build(file, &[], &[]).unwrap();
        assert_eq!(cfg.stages.len(), 5);
        assert_eq!(
            cfg.group.as_ref().map(|g| g.group.as_str()),
            Some("pipeline")
        );
        assert_eq!(cfg.admin, Some("0.0.0.0:9700".parse().unwrap()));
    }

    #[test]
    fn stack_and_memory_beyond_what_the_host_can_give_are_refused() {
        let build = |limits: &str| {
            let text = format!(
                "[input]\ntopic = \"in\"\n[output]\ntopic = \"out\"\n[[stage]]\nplugin = \"x.wasm\"\n{limits}\n"
            );
            PipelineConfig::build(toml::from_str(&text).unwrap(), &[], &[])
        };
        let err = build("stack_kb = 8192").expect_err("more stack than the threads have");
        assert!(
            err.to_string()
                .contains("stack_kb = 8192: must be 64 to 2048"),
            "{err}"
        );
        assert!(build("stack_kb = 16").is_err());
        assert!(build("memory_mb = 0").is_err());
        let cfg = build("stack_kb = 2048\nmemory_mb = 16").unwrap();
        assert_eq!(cfg.stages[0].limits.stack_bytes, 2 << 20);
        assert_eq!(cfg.stages[0].limits.memory_bytes, 16 << 20);
    }

    #[test]
    fn stage_policies_pins_and_outputs_are_read_and_checked() {
        let file: Settings = toml::from_str(
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
        let cfg = PipelineConfig::build(file, &[], &[]).unwrap();
        let s = &cfg.stages[0];
        assert_eq!(s.on_error, FailurePolicy::Stop);
        assert_eq!(s.limits.stack_bytes, 128 << 10);
        assert_eq!(s.sha256.as_deref(), Some("ab"));
        assert_eq!(cfg.compile_cache, None, "an empty path turns the cache off");
        assert_eq!(cfg.admin, Some("127.0.0.1:9700".parse().unwrap()));

        let clash: Settings = toml::from_str(
            "[input]\ntopic = \"in\"\n[output]\ntopic = \"out\"\n[[stage]]\nplugin = \"x.wasm\"\noutputs = { counts = \"out\" }\n",
        )
        .unwrap();
        let err = PipelineConfig::build(clash, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("already uses"), "{err}");
        let bad =
            toml::from_str::<Settings>("[[stage]]\nplugin = \"x.wasm\"\non_error = \"retry\"\n");
        assert!(
            bad.is_err_and(|e| e.to_string().contains("retry")),
            "unknown policies are refused"
        );
    }

    /// `Sources` as `run` parses them from a command line.
    fn flags(args: &[&str]) -> Sources {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            sources: Sources,
        }
        let argv = std::iter::once("pipeline-host").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().sources
    }

    /// The flags of a minimal pipeline: one input, one output, one stage.
    const MINIMAL: &[&str] = &["--input", "in", "--output", "out", "--plugin", "a/x.wasm"];

    #[test]
    fn group_protocols_take_only_their_own_settings() {
        let load = |extra: &[&str]| {
            let args: Vec<&str> = MINIMAL
                .iter()
                .chain(["--group", "g"].iter())
                .chain(extra)
                .copied()
                .collect();
            PipelineConfig::load(&flags(&args))
        };
        let g = load(&[]).unwrap().group.unwrap();
        assert_eq!(
            (g.protocol, g.classic_by),
            (GroupProtocol::Auto, None),
            "auto by default"
        );
        let g = load(&["--group-protocol", "consumer", "--server-assignor", "range"])
            .unwrap()
            .group
            .unwrap();
        assert_eq!(
            (g.protocol, g.server_assignor.as_deref()),
            (GroupProtocol::Consumer, Some("range"))
        );
        for (flag, value) in [
            ("--session-timeout-ms", "6000"),
            ("--heartbeat-interval-ms", "500"),
            ("--assignor", "cooperative-sticky"),
        ] {
            let e = load(&["--group-protocol", "consumer", flag, value]).unwrap_err();
            assert!(
                e.to_string().contains(&format!(
                    "{flag} does not apply to --group-protocol consumer"
                )),
                "{e}"
            );
            // Under auto, explicit or by default, a classic setting keeps
            // the group classic.
            for auto in [&["--group-protocol", "auto"][..], &[]] {
                let g = load(&[auto, &[flag, value]].concat())
                    .unwrap()
                    .group
                    .unwrap();
                assert_eq!(
                    (g.protocol, g.classic_by),
                    (GroupProtocol::Auto, Some(flag))
                );
            }
            let e = load(&[flag, value, "--server-assignor", "range"]).unwrap_err();
            assert!(e.to_string().contains("choose one protocol"), "{e}");
        }
        let e = load(&[
            "--group-protocol",
            "classic",
            "--server-assignor",
            "uniform",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("consumer protocol only"), "{e}");
        let e = load(&[
            "--group-protocol",
            "consumer",
            "--server-assignor",
            "sticky",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("uniform and range"), "{e}");
        // Classic takes its timers as before.
        let g = load(&["--session-timeout-ms", "6000"])
            .unwrap()
            .group
            .unwrap();
        assert_eq!(g.session_timeout, Duration::from_secs(6));
    }

    #[test]
    fn several_inputs_and_a_pattern_never_read_what_is_written() {
        let cfg = PipelineConfig::load(&flags(&[
            "--input",
            "a,b",
            "--input-pattern",
            "orders-.*",
            "--output",
            "orders-out",
            "--plugin",
            "a/x.wasm",
            "--route",
            "s=orders-suspicious",
            "--group",
            "g",
        ]))
        .unwrap();
        assert_eq!(cfg.inputs.names(), ["a", "b"]);
        assert_eq!(cfg.state_topic, "a-state");
        let listed: BTreeMap<String, i32> = [
            "a",
            "b",
            "a-dlq",
            "orders-eu",
            "orders-eu-dlq",
            "orders-out",
            "orders-suspicious",
        ]
        .iter()
        .map(|t| (t.to_string(), 1))
        .collect();
        assert_eq!(
            cfg.inputs.select(&listed).into_keys().collect::<Vec<_>>(),
            ["a", "b", "orders-eu"]
        );
        assert_eq!(cfg.dead_letter.of("orders-eu"), "orders-eu-dlq");
        // Only a pattern: the state topic is named after the group.
        let cfg = PipelineConfig::load(&flags(&[
            "--input-pattern",
            "x.*",
            "--output",
            "out",
            "--plugin",
            "a/x.wasm",
            "--group",
            "g",
            "--dlq",
            "all-dead",
        ]))
        .unwrap();
        assert_eq!(cfg.state_topic, "g-state");
        assert_eq!(cfg.dead_letter.of("x1"), "all-dead");
        // An input's own dead-letter topic cannot be another input.
        let e = PipelineConfig::load(&flags(&[
            "--input", "a,a-dlq", "--output", "out", "--plugin", "a/x.wasm",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("must differ"), "{e}");
        let e =
            PipelineConfig::load(&flags(&["--output", "out", "--plugin", "a/x.wasm"])).unwrap_err();
        assert!(e.to_string().contains("--input-pattern"), "{e}");
    }

    #[test]
    fn flags_override_and_validate() {
        let mut args = MINIMAL.to_vec();
        args.extend_from_slice(&["--plugin", "b/y.wasm", "--stage-config", "y.k=v"]);
        let cli = flags(&args);
        let cfg = PipelineConfig::load(&cli).unwrap();
        assert_eq!(cfg.stages[1].config, [("k".into(), "v".into())]);
        assert_eq!(cfg.dead_letter.of("in"), "in-dlq");
        let bad = Sources {
            stage_config: vec!["zz.k=v".into()],
            ..cli.clone()
        };
        assert!(
            PipelineConfig::load(&bad)
                .unwrap_err()
                .to_string()
                .contains("no stage named zz")
        );
        let mut same = cli;
        same.settings.output.output = Some("in".into());
        assert!(PipelineConfig::load(&same).is_err());
    }

    #[test]
    fn flags_are_laid_over_the_file_table_by_table() {
        let file: Settings = toml::from_str(
            r#"
[kafka]
bootstrap = ["a:9092", "b:9092"]
client_id = "from-file"
[kafka.sasl]
mechanism = "SCRAM-SHA-512"
username = "file"
password_file = "pw"
[input]
topic = "in"
fetch_max_wait_ms = 100
[group]
id = "g"
"#,
        )
        .unwrap();
        let cli = flags(&[
            "--tls-ca-file",
            "ca.pem",
            "--sasl-username",
            "cli",
            "--fetch-max-wait-ms",
            "7",
            "--until-end",
        ]);
        let s = cli.settings.over(&file).unwrap();
        assert_eq!(s.kafka.tls.ca_file, Some(PathBuf::from("ca.pem")));
        assert!(s.kafka.tls.wanted(), "a --tls-* flag turns TLS on");
        assert_eq!(s.kafka.sasl.mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(s.kafka.sasl.username.as_deref(), Some("cli"));
        assert_eq!(s.kafka.sasl.password_file, Some(PathBuf::from("pw")));
        assert_eq!(s.kafka.client_id.as_deref(), Some("from-file"));
        assert_eq!(
            s.input.input.map(|l| l.to_vec()),
            Some(vec!["in".to_string()])
        );
        assert_eq!(s.input.fetch_max_wait_ms, Some(7));
        assert!(s.input.until_end);
        assert_eq!(s.group.group.as_deref(), Some("g"));
        let none = flags(&[]).settings.over(&Settings::default()).unwrap();
        assert!(!none.kafka.tls.wanted() && !none.kafka.sasl.wanted());
        let empty_tls: Settings = toml::from_str("[kafka.tls]\n").unwrap();
        assert!(
            flags(&[])
                .settings
                .over(&empty_tls)
                .unwrap()
                .kafka
                .tls
                .wanted(),
            "an empty [kafka.tls] table turns TLS on, as --tls does"
        );
    }

    /// Every setting once given as a flag and once as a file key reaches
    /// the same configuration.
    #[test]
    fn a_flag_and_its_file_key_agree() {
        let file: Settings = toml::from_str(
            r#"
[input]
topic = "in"
until_end = true
[output]
topic = "out"
[dead_letter]
topic = "dead"
[topics]
create = false
[group]
id = "g"
instance_id = "i"
[runtime]
timer_interval_ms = 250
stats_interval_ms = 2000
shutdown_timeout_ms = 3000
"#,
        )
        .unwrap();
        let cli = flags(&[
            "--input",
            "in",
            "--until-end",
            "--output",
            "out",
            "--dlq",
            "dead",
            "--create-topics",
            "false",
            "--group",
            "g",
            "--group-instance-id",
            "i",
            "--timer-interval-ms",
            "250",
            "--stats-interval-ms",
            "2000",
            "--shutdown-timeout-ms",
            "3000",
        ]);
        assert_eq!(cli.settings, file);
    }
}
