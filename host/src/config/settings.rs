//! Every setting of a pipeline run, defined once: each field below is a
//! command-line flag (clap) *and* a key of the TOML file (serde), with its
//! doc as the help text. The file's tables are these structs; the flags are
//! the same structs flattened into `pipeline-host run`.
//!
//! Flags win over the file: both are parsed into [`Settings`], the flags'
//! settings are laid over the file's as TOML tables ([`Settings::over`]),
//! and the result is read back. A setting absent from both takes the
//! default [`crate::config::PipelineConfig::build`] gives it, named in its
//! doc here.
//!
//! Adding a setting is one field here and one line where `build` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::format::{Format, SubjectStrategy};
use crate::group::{Assignor, GroupProtocol};
use crate::kafka::security::{SaslOptions, TlsOptions};
use crate::sink::Codec;
use crate::source::StartFrom;
use crate::stages::{FailurePolicy, Tombstones};

/// All settings of a run: the TOML file's tables, and `run`'s flags.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[kafka]`: the brokers and how to reach them.
    #[command(flatten)]
    #[serde(default)]
    pub kafka: KafkaArgs,
    /// `[input]`: the topic read and how.
    #[command(flatten)]
    #[serde(default)]
    pub input: InputArgs,
    /// `[output]`: the topic results go to.
    #[command(flatten)]
    #[serde(default)]
    pub output: OutputArgs,
    /// `[dead_letter]`: the topic failures go to.
    #[command(flatten)]
    #[serde(default)]
    pub dead_letter: DeadLetterArgs,
    /// `[topics]`: creation of missing topics.
    #[command(flatten)]
    #[serde(default)]
    pub topics: TopicsArgs,
    /// `[group]`: consumer-group membership.
    #[command(flatten)]
    #[serde(default)]
    pub group: GroupArgs,
    /// `[runtime]`: how the host runs its stages and itself.
    #[command(flatten)]
    #[serde(default)]
    pub runtime: RuntimeArgs,
    /// `[registry]`: the schema registry of framed formats.
    #[command(flatten)]
    #[serde(default)]
    pub registry: RegistryArgs,
    /// `[[stage]]`, in chain order. A stage is a table of its own (plugin,
    /// settings, limits, policy, pin, outputs), so its flags are the
    /// shorter `--plugin` and `--stage-config` of [`Sources`].
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage: Vec<StageFile>,
}

/// `[kafka]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port (a list in the file;
    /// default 127.0.0.1:9092).
    #[arg(long, env = "PIPELINE_BOOTSTRAP")]
    pub bootstrap: Option<StringOrList>,
    /// Client id sent to the brokers (default pipeline-host).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Timeout of one broker request, milliseconds (default 30000).
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// How long to wait for the brokers at start-up, milliseconds (default
    /// 60000).
    #[arg(long)]
    pub connect_timeout_ms: Option<u64>,
    /// `[kafka.tls]`: TLS to the brokers; the table (or any `--tls*` flag)
    /// turns it on.
    #[command(flatten)]
    #[serde(default, skip_serializing_if = "TlsOptions::is_unset")]
    pub tls: TlsOptions,
    /// `[kafka.sasl]`: SASL authentication; the table (or any `--sasl*`
    /// flag) turns it on.
    #[command(flatten)]
    #[serde(default, skip_serializing_if = "SaslOptions::is_unset")]
    pub sasl: SaslOptions,
}

/// A string or a list of strings: `"a,b"` or `["a", "b"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// `"a,b"`: comma-separated.
    One(String),
    /// `["a", "b"]`.
    Many(Vec<String>),
}

impl std::str::FromStr for StringOrList {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(StringOrList::One(s.to_owned()))
    }
}

impl StringOrList {
    /// The items, trimmed, without empty ones.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StringOrList::One(s) => split_list(s),
            StringOrList::Many(v) => v.clone(),
        }
    }
}

/// Splits a comma-separated list, trimming items and skipping empty ones.
fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `[input]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Input")]
pub struct InputArgs {
    /// Input topics, comma-separated (a list in the file); this or
    /// `--input-pattern` is required.
    #[arg(long)]
    #[serde(rename = "topic")]
    pub input: Option<StringOrList>,
    /// Also read every topic whose whole name matches this regular
    /// expression (Rust `regex` syntax), found at start and at every
    /// metadata refresh; the pipeline's own output, route, side,
    /// dead-letter and state topics and Kafka's internal topics are never
    /// matched.
    #[arg(long = "input-pattern", value_name = "REGEX")]
    #[serde(rename = "pattern")]
    pub input_pattern: Option<String>,
    /// Where to start a partition without a committed offset (default
    /// earliest).
    #[arg(long, value_enum)]
    pub start: Option<StartFrom>,
    /// What to do with null values, Kafka tombstones (default drop).
    #[arg(long, value_enum)]
    pub tombstones: Option<Tombstones>,
    /// Bytes per fetch request (default 1048576).
    #[arg(long)]
    pub fetch_max_bytes: Option<i32>,
    /// How long the broker may hold a fetch for new data, milliseconds
    /// (default 500).
    #[arg(long)]
    pub fetch_max_wait_ms: Option<u64>,
    /// Most bytes the compressed batches of one fetch may inflate to
    /// (default 67108864, 64 MiB): a batch past it (a decompression bomb)
    /// becomes a dead letter of its compressed bytes, so memory stays
    /// bounded.
    #[arg(long)]
    pub max_inflated_bytes: Option<usize>,
    /// Largest batch handed to the stages, in records; fetches are split
    /// (default 1000).
    #[arg(long)]
    pub max_batch_records: Option<usize>,
    /// How often the cluster's topics are listed, milliseconds (Kafka's
    /// `metadata.max.age.ms`; default 30000, Kafka's 5 minutes being long
    /// for a pattern's new topics): topics matching the pattern and
    /// partitions added while running are consumed from their start, and
    /// deleted input topics are let go.
    #[arg(long)]
    pub metadata_refresh_ms: Option<u64>,
    /// Stop once every partition is read up to the end it had at start.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub until_end: bool,
    /// Format of the input's values (default json): json is a JSON object
    /// as is; avro is framed for a schema registry (magic byte, schema id)
    /// and decoded into the JSON object the stages see (README,
    /// "Formats").
    #[arg(long = "input-format", value_enum, env = "PIPELINE_INPUT_FORMAT")]
    #[serde(rename = "format")]
    pub input_format: Option<Format>,
    /// Format of the input's keys (default json: keys as they are).
    #[arg(long = "input-key-format", value_enum)]
    #[serde(rename = "key_format")]
    pub input_key_format: Option<Format>,
    /// Avro schema file that input values are read as (Avro schema
    /// resolution from each record's writer schema: added fields take
    /// their defaults, removed ones go); default: each writer's own.
    #[arg(long = "input-reader-schema", value_name = "FILE")]
    #[serde(rename = "reader_schema")]
    pub input_reader_schema: Option<PathBuf>,
}

/// `[output]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Output topic (required).
    #[arg(long)]
    #[serde(rename = "topic")]
    pub output: Option<String>,
    /// A route a stage may send records to, NAME=TOPIC, repeatable (file:
    /// `routes = { NAME = "TOPIC" }`). Routed records go to TOPIC instead
    /// of the output topic, in the output's format; a stage that declares
    /// a name not mapped here is refused.
    #[arg(long = "route", value_name = "NAME=TOPIC", value_parser = name_topic)]
    #[serde(default, with = "route_map", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<(String, String)>,
    /// Delivery guarantee (default at-least-once). exactly-once writes the
    /// output, dead letters, side records, checkpoints and input offsets in
    /// Kafka transactions; it needs a consumer group, and readers of the
    /// output must read with isolation.level=read_committed.
    #[arg(long, value_enum)]
    pub guarantee: Option<Guarantee>,
    /// Transactional id of this process with exactly-once (default
    /// <group>-<group-instance-id> for a static member, else
    /// <group>-<pid>-<start time>).
    #[arg(long)]
    pub transactional_id: Option<String>,
    /// The broker aborts a transaction left open this long,
    /// milliseconds (default 60000).
    #[arg(long)]
    pub transaction_timeout_ms: Option<u64>,
    /// Compression of the output, side-output and state topics' record
    /// batches (default none: the least CPU per event, as Kafka's own
    /// producers default to). A record the topic refuses as too large is
    /// tried once more alone, zstd-compressed, before it becomes a dead
    /// letter.
    #[arg(long, value_enum)]
    #[serde(rename = "compression")]
    pub output_compression: Option<Codec>,
    /// At-least-once: write every batch with a producer id and sequence
    /// numbers, so a batch sent again after a timeout or a leader failover
    /// is kept once (default true, as Kafka's Java producer since 3.0);
    /// false for brokers that refuse InitProducerId. Exactly-once is
    /// always idempotent.
    #[arg(long)]
    pub idempotence: Option<bool>,
    /// Format of the output's values (default json); avro encodes the last
    /// stage's JSON with the writer schema and frames it with its id.
    #[arg(long = "output-format", value_enum, env = "PIPELINE_OUTPUT_FORMAT")]
    #[serde(rename = "format")]
    pub output_format: Option<Format>,
    /// Format of the output's keys (default json: keys as they are).
    #[arg(long = "output-key-format", value_enum)]
    #[serde(rename = "key_format")]
    pub output_key_format: Option<Format>,
    /// Writer schema file of output values (default: the latest version of
    /// the subject, read again every --schema-refresh-ms).
    #[arg(long = "output-schema", value_name = "FILE")]
    #[serde(rename = "schema")]
    pub output_schema: Option<PathBuf>,
    /// Writer schema file of output keys (default: the subject's latest).
    #[arg(long = "output-key-schema", value_name = "FILE")]
    #[serde(rename = "key_schema")]
    pub output_key_schema: Option<PathBuf>,
    /// How output subjects are named (default topic: <topic>-value and
    /// <topic>-key; record: the record's full name; topic-record:
    /// <topic>-<record full name>).
    #[arg(long, value_enum)]
    pub subject_strategy: Option<SubjectStrategy>,
    /// Register a writer schema file under its subject at start (default
    /// true, as Confluent's serializers); false: it must be registered
    /// already, and the host only looks its id up.
    #[arg(long)]
    pub auto_register: Option<bool>,
    /// How often an output subject's latest version is read again,
    /// milliseconds (default 60000).
    #[arg(long)]
    pub schema_refresh_ms: Option<u64>,
}

/// What the pipeline promises about each input record's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Every outcome is written at least once; a crash may repeat some.
    #[default]
    AtLeastOnce,
    /// Every outcome is visible exactly once to read_committed readers.
    ExactlyOnce,
}

impl Guarantee {
    /// The name used in flags, files, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce => "exactly-once",
        }
    }
}

/// `[dead_letter]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Output")]
pub struct DeadLetterArgs {
    /// One dead-letter topic for every input (default: each input's own,
    /// `<input>-dlq`).
    #[arg(long)]
    #[serde(rename = "topic")]
    pub dlq: Option<String>,
    /// Compression of dead-letter record batches (default zstd: dead
    /// letters are rare, so compressing them costs nothing in steady
    /// state, and they carry the original bytes, which the input's producer
    /// may have compressed to fit the limit they must fit again).
    #[arg(long, value_enum)]
    #[serde(rename = "compression")]
    pub dead_letter_compression: Option<Codec>,
}

/// `[topics]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Topics")]
pub struct TopicsArgs {
    /// Create missing topics (default true).
    #[arg(long)]
    #[serde(rename = "create")]
    pub create_topics: Option<bool>,
    /// Partitions of topics the host creates (default 3).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Replication factor of topics the host creates; -1 (the default)
    /// takes the broker's `default.replication.factor`, so a three-broker
    /// cluster gets three copies without a flag.
    #[arg(long, allow_negative_numbers = true)]
    pub replication_factor: Option<i16>,
}

/// `[group]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Consumer group")]
pub struct GroupArgs {
    /// Consumer group: resume from its committed offsets, commit delivered
    /// offsets, and share the partitions with the group's other members.
    /// Without one the host reads every partition and commits nothing.
    #[arg(long, env = "PIPELINE_GROUP")]
    #[serde(rename = "id")]
    pub group: Option<String>,
    /// Static member id (group.instance.id): a restart within the session
    /// timeout keeps the assignment without a rebalance.
    #[arg(long, env = "PIPELINE_GROUP_INSTANCE_ID")]
    #[serde(rename = "instance_id")]
    pub group_instance_id: Option<String>,
    /// The coordinator drops a member silent for this long, milliseconds
    /// (default 10000).
    #[arg(long)]
    pub session_timeout_ms: Option<u64>,
    /// How long members have to rejoin during a rebalance, milliseconds
    /// (default 30000).
    #[arg(long)]
    pub rebalance_timeout_ms: Option<u64>,
    /// Heartbeat interval, milliseconds (default: a third of the session
    /// timeout, at most 1000).
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Commit interval, milliseconds (default 0: after every delivery;
    /// with exactly-once, 100: one transaction per 100 ms).
    #[arg(long)]
    pub commit_interval_ms: Option<u64>,
    /// Partition assignment strategy of the classic protocol (default
    /// range).
    #[arg(long, value_enum)]
    pub assignor: Option<Assignor>,
    /// Group protocol: auto (default: consumer where the broker offers
    /// it, else classic; classic when a classic-only setting such as
    /// --session-timeout-ms is given), consumer (KIP-848, Kafka 4.0+: the
    /// broker assigns, incrementally) or classic.
    #[arg(long, value_enum, env = "PIPELINE_GROUP_PROTOCOL")]
    #[serde(rename = "protocol")]
    pub group_protocol: Option<GroupProtocol>,
    /// Consumer protocol: the broker's assignor (uniform or range; default:
    /// the broker's group.consumer.assignors first entry, uniform).
    #[arg(long)]
    pub server_assignor: Option<String>,
    /// Share group (KIP-932, Kafka 4.1+) to read as, instead of a consumer
    /// group: several processes take records from the same partitions,
    /// and each record is acknowledged once delivered. At-least-once only.
    #[arg(long, env = "PIPELINE_SHARE_GROUP")]
    pub share_group: Option<String>,
}

/// `[runtime]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Runtime")]
pub struct RuntimeArgs {
    /// Serve the admin HTTP endpoint on this address, IP:PORT (POST
    /// /reload, GET /stages, /status, /metrics, /healthz, /readyz); none
    /// by default.
    #[arg(long)]
    pub admin: Option<String>,
    /// File with the token the admin endpoint requires (Authorization:
    /// Bearer) on everything but /healthz and /readyz; the environment
    /// variable PIPELINE_ADMIN_TOKEN wins.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Reload a stage when its plugin file or the config file changes
    /// (default true).
    #[arg(long)]
    pub watch: Option<bool>,
    /// Folder of compiled components (default
    /// ~/.cache/pipeline-host/compiled); "" in the file turns it off.
    #[arg(long)]
    pub compile_cache: Option<PathBuf>,
    /// Compile every stage at start instead of using the compile cache
    /// (the file says `compile_cache = ""`).
    #[arg(long, conflicts_with = "compile_cache")]
    #[serde(skip)]
    pub no_compile_cache: bool,
    /// Topic of stateful stages' checkpoints (default <input>-state).
    #[arg(long)]
    pub state_topic: Option<String>,
    /// How often stateful stages' on-timer runs, milliseconds (default
    /// 1000).
    #[arg(long)]
    pub timer_interval_ms: Option<u64>,
    /// Interval of the statistics log line, milliseconds (default 10000).
    #[arg(long)]
    pub stats_interval_ms: Option<u64>,
    /// How long a clean shutdown may take to flush, milliseconds (default
    /// 30000).
    #[arg(long)]
    pub shutdown_timeout_ms: Option<u64>,
}

/// `[registry]`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Schema registry")]
pub struct RegistryArgs {
    /// URL of a Confluent-compatible schema registry API (Confluent,
    /// Apicurio's /apis/ccompat/v7, Karapace, Redpanda), needed by every
    /// format but json.
    #[arg(long = "registry-url", env = "PIPELINE_REGISTRY_URL")]
    #[serde(rename = "url")]
    pub registry_url: Option<String>,
    /// User for HTTP basic authentication (with --registry-password-file).
    #[arg(long = "registry-user")]
    #[serde(rename = "user")]
    pub registry_user: Option<String>,
    /// File holding the basic-authentication password; the environment
    /// variable PIPELINE_REGISTRY_PASSWORD wins.
    #[arg(long = "registry-password-file", value_name = "FILE")]
    #[serde(rename = "password_file")]
    pub registry_password_file: Option<PathBuf>,
    /// File holding a bearer token; the environment variable
    /// PIPELINE_REGISTRY_TOKEN wins.
    #[arg(long = "registry-token-file", value_name = "FILE")]
    #[serde(rename = "token_file")]
    pub registry_token_file: Option<PathBuf>,
    /// PEM file of the CA certificates of an https registry (default: the
    /// Mozilla roots built into the binary).
    #[arg(long = "registry-ca-file", value_name = "FILE")]
    #[serde(rename = "ca_file")]
    pub registry_ca_file: Option<PathBuf>,
    /// Timeout of one registry request, milliseconds (default 10000).
    #[arg(long = "registry-timeout-ms")]
    #[serde(rename = "timeout_ms")]
    pub registry_timeout_ms: Option<u64>,
    /// Most schemas kept by id (default 1000); the least recently used
    /// goes first.
    #[arg(long = "registry-cache-size")]
    #[serde(rename = "cache_size")]
    pub registry_cache_size: Option<usize>,
}

/// One `[[stage]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    /// Name in logs and dead-letter headers (default: the file stem).
    pub name: Option<String>,
    /// Path of the `.wasm` (or `.wat`) component, relative to the config
    /// file.
    pub plugin: PathBuf,
    /// Settings passed to the stage's `init`. Strings, numbers and booleans
    /// are passed as text; arrays are joined with commas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, toml::Value>,
    /// Linear memory cap, MiB (default 64).
    pub memory_mb: Option<usize>,
    /// Time budget per batch, milliseconds (default 2000).
    pub time_budget_ms: Option<u64>,
    /// Native stack the stage may use, KiB (default 512).
    pub stack_kb: Option<usize>,
    /// What a stage error does to its batch: `dead-letter` (the default),
    /// `skip`, `stop`.
    pub on_error: Option<FailurePolicy>,
    /// Expected sha256 of the plugin file (hex); a different file is
    /// refused, at start and on reload.
    pub sha256: Option<String>,
    /// Side outputs of a stateful stage: output name -> topic.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

/// Where a run's configuration comes from: an optional file, the flags
/// over it, and the stage flags. Kept by the running pipeline so that a
/// reload reads the same sources again.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Sources {
    /// TOML configuration file; flags override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The settings given as flags.
    #[command(flatten)]
    pub settings: Settings,
    /// A stage component (.wasm or .wat), repeatable; runs in the order
    /// given. Replaces the config file's stages.
    #[arg(long = "plugin", help_heading = "Stages")]
    pub plugins: Vec<PathBuf>,
    /// A stage setting, STAGE.KEY=VALUE (STAGE is the file stem or the
    /// configured name), repeatable.
    #[arg(long = "stage-config", help_heading = "Stages")]
    pub stage_config: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Settings {
    /// Reads and parses a config file; stage plugin paths are resolved
    /// against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut file: Settings = toml::from_str(&text).map_err(|e| ConfigError::Parse {
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

    /// `self` (the flags) laid over `file`: every setting given in `self`
    /// wins, table by table (so `--tls-ca-file` keeps the file's
    /// `[kafka.tls] cert_file`); the rest comes from `file`.
    pub fn over(&self, file: &Settings) -> Result<Settings, ConfigError> {
        let table = |s: &Settings| match toml::Value::try_from(s) {
            Ok(toml::Value::Table(t)) => Ok(t),
            Ok(_) => Err(ConfigError::Invalid("settings are not a table".into())),
            Err(e) => Err(ConfigError::Invalid(format!(
                "cannot represent the settings as TOML: {e}"
            ))),
        };
        let mut merged = table(file)?;
        lay_over(&mut merged, table(self)?);
        let mut out: Settings = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        // Flags that have no TOML form of their own.
        out.runtime.no_compile_cache = self.runtime.no_compile_cache;
        Ok(out)
    }
}

/// Lays `top` over `base`: keys of `top` replace those of `base`, except
/// that two tables are merged key by key.
fn lay_over(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => lay_over(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// `NAME=TOPIC` of `--route`.
fn name_topic(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, topic)) if !name.trim().is_empty() && !topic.trim().is_empty() => {
            Ok((name.trim().to_owned(), topic.trim().to_owned()))
        }
        _ => Err(format!(
            "{s}: expected NAME=TOPIC, such as suspicious=suspicious-logins"
        )),
    }
}

/// `[output] routes` as a TOML table (name -> topic), held as the pairs
/// the `--route` flags give.
mod route_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        pairs
            .iter()
            .cloned()
            .collect::<BTreeMap<String, String>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .collect())
    }
}
