//! Value and key formats at the pipeline's two edges. Stages always see
//! JSON objects (their contract does not change); this module turns what
//! the input topic holds into them, and the last stage's JSON into what the
//! output topic wants:
//!
//! - [`Decoder`], at the source edge: a value (or key) framed for a
//!   Confluent-compatible Schema Registry (magic byte 0, a 4-byte schema
//!   id, then Avro binary) becomes the JSON of the schema the id names,
//!   fetched from the registry once and cached ([`registry`]). A value that
//!   is not framed, names an id the registry does not know, or does not
//!   decode is a dead letter with the reason; a registry that cannot be
//!   reached makes the partition wait and retry, so no good record becomes
//!   a dead letter because of it.
//! - [`Encoder`], at the sink edge: the JSON becomes Avro of the writer
//!   schema (from a file, registered or looked up under the subject, or the
//!   subject's latest version, refreshed), framed with its id. An output
//!   that does not fit is a dead letter naming the field.
//!
//! Dead letters always carry the input's original bytes.

pub mod avro;
pub mod framing;
pub mod json_schema;
pub mod protobuf;
pub mod registry;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::shutdown::CancellationToken;
use crate::stages::InputRecord;
use avro::Plan;
use registry::{RegisteredSchema, Registry, RegistryError, SchemaType};

/// The format of a topic's values or keys.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A JSON object, as is (keys: any bytes, as is).
    #[default]
    Json,
    /// Avro, framed for a schema registry.
    Avro,
    /// Protobuf, framed for a schema registry (with message indexes).
    Protobuf,
    /// JSON validated by a JSON Schema, framed for a schema registry.
    JsonSchema,
}

impl Format {
    /// True when the format needs a schema registry.
    pub fn framed(self) -> bool {
        self != Format::Json
    }

    /// The name used in flags, files and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Protobuf => "protobuf",
            Format::JsonSchema => "json-schema",
        }
    }

    /// The registry's `schemaType` of the format.
    fn schema_type(self) -> Option<SchemaType> {
        match self {
            Format::Json => None,
            Format::Avro => Some(SchemaType::Avro),
            Format::Protobuf => Some(SchemaType::Protobuf),
            Format::JsonSchema => Some(SchemaType::Json),
        }
    }
}

/// How the output subject is named (Confluent's subject name strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectStrategy {
    /// `<topic>-value` and `<topic>-key` (TopicNameStrategy).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
}

/// Where a value or key stands in its record, for subjects and reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The record's value.
    Value,
    /// The record's key.
    Key,
}

impl Part {
    fn as_str(self) -> &'static str {
        match self {
            Part::Value => "value",
            Part::Key => "key",
        }
    }
}

/// The formats of a run, validated.
#[derive(Debug, Clone, Default)]
pub struct FormatConfig {
    /// Input values.
    pub input_value: Format,
    /// Input keys.
    pub input_key: Format,
    /// An Avro reader schema for input values (schema resolution).
    pub reader_schema: Option<String>,
    /// Output values.
    pub output_value: Format,
    /// Output keys.
    pub output_key: Format,
    /// The output values' writer schema text; none: the subject's latest.
    pub value_schema: Option<String>,
    /// The output keys' writer schema text; none: the subject's latest.
    pub key_schema: Option<String>,
    /// How output subjects are named.
    pub subject_strategy: SubjectStrategy,
    /// Register a writer schema from a file under its subject (else it
    /// must be registered already).
    pub auto_register: bool,
    /// How often the subject's latest version is read again.
    pub schema_refresh: Duration,
    /// The registry, when a format needs one.
    pub registry: Option<registry::RegistrySettings>,
    /// Most schemas cached by id.
    pub cache_size: usize,
}

impl FormatConfig {
    /// True when any edge is not plain JSON.
    pub fn framed(&self) -> bool {
        [
            self.input_value,
            self.input_key,
            self.output_value,
            self.output_key,
        ]
        .iter()
        .any(|f| f.framed())
    }
}

/// The registry of a tool's `--format` and `--registry-url` (`generate`,
/// `view`): none for json; an error naming the missing flag otherwise.
pub fn tool_registry(
    format: Format,
    url: Option<&str>,
) -> Result<Option<registry::RegistrySettings>, String> {
    if !format.framed() {
        return Ok(None);
    }
    let url = url.ok_or_else(|| format!("--format {} needs --registry-url", format.as_str()))?;
    Ok(Some(registry::RegistrySettings {
        url: url.to_owned(),
        auth: None,
        timeout: Duration::from_secs(10),
        tls: Default::default(),
    }))
}

/// Why the formats could not start.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The registry refused or does not hold what the settings name.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A schema cannot be used.
    #[error("{what}: {why}")]
    Schema {
        /// Which schema.
        what: String,
        /// Why.
        why: String,
    },
    /// Stopped while waiting for the registry.
    #[error("stopped while waiting for the schema registry")]
    Stopped,
}

/// Registry counters, for the metrics.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Registry calls that failed and were retried.
    pub errors: AtomicU64,
    /// Schemas fetched by id.
    pub fetched: AtomicU64,
    /// Partitions waiting for the registry now.
    pub waiting: AtomicU64,
    /// Records that named a schema id the registry does not know.
    pub unknown_ids: AtomicU64,
}

/// A compiled schema.
#[derive(Debug)]
enum Compiled {
    Avro(Plan),
    Protobuf(protobuf::Proto),
    Json(json_schema::JsonSchema),
}

impl Compiled {
    /// The format a schema of this kind frames.
    fn format(&self) -> Format {
        match self {
            Compiled::Avro(_) => Format::Avro,
            Compiled::Protobuf(_) => Format::Protobuf,
            Compiled::Json(_) => Format::JsonSchema,
        }
    }

    /// The name a record-name subject strategy uses: an Avro record's or a
    /// Protobuf message's full name, a JSON Schema's title.
    fn record_name(&self) -> String {
        match self {
            Compiled::Avro(p) => p.name().to_owned(),
            Compiled::Protobuf(p) => p.first_name(),
            Compiled::Json(j) => j.title().to_owned(),
        }
    }
}

/// What the cache knows of a schema id.
#[derive(Debug, Clone)]
enum Known {
    Schema(Arc<Compiled>),
    /// The registry answered 404 (kept a while, so a flood of records with
    /// a bad id does not become a flood of requests).
    Missing {
        reason: String,
        until: Instant,
    },
}

/// How long a 404 for a schema id is believed.
const MISSING_TTL: Duration = Duration::from_secs(30);

/// Schemas by id, bounded: past the bound, the least recently used goes.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<u32, (Known, u64)>,
    clock: u64,
    capacity: usize,
}

impl Cache {
    fn get(&mut self, id: u32) -> Option<Known> {
        self.clock += 1;
        let clock = self.clock;
        let (known, used) = self.entries.get_mut(&id)?;
        if let Known::Missing { until, .. } = known
            && *until < Instant::now()
        {
            self.entries.remove(&id);
            return None;
        }
        *used = clock;
        Some(known.clone())
    }

    fn put(&mut self, id: u32, known: Known) {
        self.clock += 1;
        if self.entries.len() >= self.capacity.max(1)
            && !self.entries.contains_key(&id)
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(id, (known, self.clock));
    }
}

/// The source edge: framed values and keys to JSON.
#[derive(Debug)]
pub struct Decoder {
    registry: Registry,
    value: Format,
    key: Format,
    reader: Option<(apache_avro::Schema, Plan)>,
    cache: Mutex<Cache>,
    /// Counters for the metrics.
    pub stats: Arc<RegistryStats>,
}

/// One decoded batch: the JSON of each record's value and key, or why it
/// could not be decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    buf: Vec<u8>,
    values: Vec<Result<Option<(usize, usize)>, String>>,
    keys: Vec<Option<(usize, usize)>>,
}

impl Decoded {
    /// Record `i`'s value as JSON (`Ok(None)`: a tombstone), or the reason
    /// it is a dead letter.
    pub fn value(&self, i: usize) -> Result<Option<&[u8]>, &str> {
        match &self.values[i] {
            Ok(Some((a, b))) => Ok(Some(&self.buf[*a..*b])),
            Ok(None) => Ok(None),
            Err(reason) => Err(reason),
        }
    }

    /// Record `i`'s decoded key, when keys are decoded (else `None`: the
    /// caller keeps the record's own key).
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys
            .get(i)
            .copied()
            .flatten()
            .map(|(a, b)| &self.buf[a..b])
    }
}

/// An input record as the stages see it: its value and key decoded.
#[derive(Debug, Clone, Copy)]
pub struct DecodedRecord<'a> {
    record: &'a rskafka::record::RecordAndOffset,
    decoded: &'a Decoded,
    i: usize,
}

impl Decoded {
    /// The records of `records` (the batch decoded into `self`) with their
    /// decoded values and keys.
    pub fn records<'a>(
        &'a self,
        records: &'a [rskafka::record::RecordAndOffset],
    ) -> Vec<DecodedRecord<'a>> {
        (0..records.len())
            .map(|i| DecodedRecord {
                record: &records[i],
                decoded: self,
                i,
            })
            .collect()
    }
}

impl InputRecord for DecodedRecord<'_> {
    fn key(&self) -> Option<&[u8]> {
        self.decoded
            .key(self.i)
            .or(self.record.record.key.as_deref())
    }

    fn value(&self) -> Option<&[u8]> {
        self.decoded.value(self.i).ok().flatten()
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.record.headers()
    }

    fn timestamp_ms(&self) -> i64 {
        self.record.timestamp_ms()
    }

    fn offset(&self) -> i64 {
        self.record.offset
    }

    fn rejected(&self) -> Option<&str> {
        self.decoded.value(self.i).err()
    }
}

impl Decoder {
    /// The decoder of `config`'s input formats; `None` when both are JSON.
    pub fn new(
        config: &FormatConfig,
        stats: Arc<RegistryStats>,
    ) -> Result<Option<Self>, FormatError> {
        if !config.input_value.framed() && !config.input_key.framed() {
            return Ok(None);
        }
        let registry = registry_of(config)?;
        let reader = match &config.reader_schema {
            Some(text) => {
                let plan = Plan::parse(text, &[]).map_err(|e| FormatError::Schema {
                    what: "--input-reader-schema".into(),
                    why: e.to_string(),
                })?;
                Some((plan.schema().clone(), plan))
            }
            None => None,
        };
        Ok(Some(Self {
            registry,
            value: config.input_value,
            key: config.input_key,
            reader,
            cache: Mutex::new(Cache {
                capacity: config.cache_size,
                ..Cache::default()
            }),
            stats,
        }))
    }

    /// Fetches the schema of every id the framed values and keys of
    /// `records` name that the cache lacks. While the registry cannot be
    /// reached it waits and retries (with backoff, counted, warned about);
    /// `Err(Stopped)` when `stop` fires first.
    pub async fn prepare<'a>(
        &self,
        records: impl Iterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>)>,
        topic: &str,
        partition: i32,
        stop: &CancellationToken,
    ) -> Result<(), FormatError> {
        let mut wanted: Vec<u32> = Vec::new();
        for (key, value) in records {
            for (bytes, format) in [(value, self.value), (key, self.key)] {
                if let (true, Some(b)) = (format.framed(), bytes)
                    && let Ok((id, _)) = framing::unframe(b)
                    && !wanted.contains(&id)
                {
                    wanted.push(id);
                }
            }
        }
        for id in wanted {
            if self.cache.lock().expect("schema cache").get(id).is_some() {
                continue;
            }
            let known = self.fetch(id, topic, partition, stop).await?;
            self.cache.lock().expect("schema cache").put(id, known);
        }
        Ok(())
    }

    async fn fetch(
        &self,
        id: u32,
        topic: &str,
        partition: i32,
        stop: &CancellationToken,
    ) -> Result<Known, FormatError> {
        let mut backoff = Backoff::broker();
        let mut waiting = false;
        let known = loop {
            match fetch_compiled(&self.registry, id).await {
                Ok(compiled) => {
                    self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                    break Known::Schema(Arc::new(compiled));
                }
                // Down, slow, or refusing this client (credentials, ACLs):
                // nothing about the record; wait, never dead-letter it.
                Err(FetchError::Registry(e)) if !matches!(e, RegistryError::NotFound { .. }) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if !waiting {
                        waiting = true;
                        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
                    }
                    let delay = backoff.next_delay();
                    if e.transient() {
                        tracing::warn!(topic, partition, schema_id = id, error = %e, retry_in = ?delay, "the schema registry cannot be reached: this partition waits for it (no record becomes a dead letter for it)");
                    } else {
                        tracing::error!(topic, partition, schema_id = id, error = %e, retry_in = ?delay, "the schema registry refuses this client: check --registry-user, the password or the token; this partition waits (no record becomes a dead letter for it)");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => {
                            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                            return Err(FormatError::Stopped);
                        }
                    }
                }
                Err(FetchError::Registry(_)) => {
                    break Known::Missing {
                        reason: format!(
                            "schema id {id} is unknown to the schema registry {}",
                            self.registry.url()
                        ),
                        until: Instant::now() + MISSING_TTL,
                    };
                }
                Err(e) => {
                    break Known::Missing {
                        reason: format!("schema id {id}: {e}"),
                        until: Instant::now() + MISSING_TTL,
                    };
                }
            }
        };
        if waiting {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(
                topic,
                partition,
                schema_id = id,
                "the schema registry answers again"
            );
        }
        Ok(known)
    }

    /// Whether an output may reuse its input's payload: a framed value
    /// read without a reader schema (with one, the JSON the stages saw is
    /// not the payload's).
    fn reusable(&self) -> bool {
        self.reader.is_none() && self.value.framed()
    }

    /// The cached schema of `id`.
    fn schema(&self, id: u32) -> Option<Arc<Compiled>> {
        match self.cache.lock().expect("schema cache").get(id)? {
            Known::Schema(c) => Some(c),
            Known::Missing { .. } => None,
        }
    }

    /// Decodes the values and keys of `records` (each `(key, value)`),
    /// after [`Decoder::prepare`].
    pub fn decode<'a>(
        &self,
        records: impl Iterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>)>,
        into: &mut Decoded,
    ) {
        into.buf.clear();
        into.values.clear();
        into.keys.clear();
        // The schema last used per part: a batch mostly has one, so most
        // records skip the cache's lock.
        let mut last = [None, None];
        for (key, value) in records {
            let value = match value {
                None => Ok(None),
                Some(v) if !self.value.framed() => {
                    let a = into.buf.len();
                    into.buf.extend_from_slice(v);
                    Ok(Some((a, into.buf.len())))
                }
                Some(v) => {
                    // Avro's JSON is about twice its binary (the names).
                    into.buf.reserve(2 * v.len());
                    self.decode_one(v, Part::Value, &mut last[0], &mut into.buf)
                        .map(Some)
                }
            };
            let key = match (key, self.key.framed()) {
                (Some(k), true) => match self.decode_one(k, Part::Key, &mut last[1], &mut into.buf)
                {
                    Ok(range) => Some(range),
                    Err(reason) => {
                        // A key that does not decode fails its record.
                        into.values.push(Err(reason));
                        into.keys.push(None);
                        continue;
                    }
                },
                _ => None,
            };
            into.values.push(value);
            into.keys.push(key);
        }
    }

    fn decode_one(
        &self,
        bytes: &[u8],
        part: Part,
        last: &mut Option<(u32, Arc<Compiled>)>,
        buf: &mut Vec<u8>,
    ) -> Result<(usize, usize), String> {
        let (id, payload) =
            framing::unframe(bytes).map_err(|e| format!("{}: {e}", part.as_str()))?;
        let known = match last {
            Some((i, _)) if *i == id => None,
            _ => Some(self.cache.lock().expect("schema cache").get(id)),
        };
        match known {
            None => {}
            Some(Some(Known::Schema(c))) => *last = Some((id, c)),
            Some(Some(Known::Missing { reason, .. })) => {
                self.stats.unknown_ids.fetch_add(1, Ordering::Relaxed);
                return Err(format!("{}: {reason}", part.as_str()));
            }
            // Evicted since `prepare` (a cache smaller than a batch's ids).
            Some(None) => {
                return Err(format!(
                    "{}: schema id {id} is not cached (raise --registry-cache-size above the schemas one batch uses)",
                    part.as_str()
                ));
            }
        }
        let compiled = &last.as_ref().expect("the schema just found").1;
        let expected = match part {
            Part::Value => self.value,
            Part::Key => self.key,
        };
        if compiled.format() != expected {
            return Err(format!(
                "{}: schema id {id} is a {} schema, and the input's {} format is {}",
                part.as_str(),
                compiled.format().as_str(),
                part.as_str(),
                expected.as_str()
            ));
        }
        let start = buf.len();
        let decoded = match &**compiled {
            Compiled::Avro(plan) => {
                let resolved;
                let (plan, payload) = match (&self.reader, part) {
                    (Some((reader, reader_plan)), Part::Value) => {
                        resolved = resolve(plan, reader, payload)
                            .map_err(|e| format!("value: schema id {id}: {e}"))?;
                        (reader_plan, &resolved[..])
                    }
                    _ => (plan, payload),
                };
                plan.decode(payload, buf).map_err(|e| e.to_string())
            }
            Compiled::Protobuf(proto) => {
                protobuf::read_indexes(payload).and_then(|(indexes, payload)| {
                    let message = proto.message(&indexes)?;
                    protobuf::decode(&message, payload, buf)
                })
            }
            Compiled::Json(schema) => schema
                .check(payload)
                .map(|()| buf.extend_from_slice(payload)),
        };
        if let Err(e) = decoded {
            buf.truncate(start);
            return Err(format!("{}: schema id {id}: {e}", part.as_str()));
        }
        Ok((start, buf.len()))
    }
}

/// The writer's datum resolved to the reader schema (Avro schema
/// resolution: fields added with defaults, removed, promoted), as the
/// reader schema's binary.
fn resolve(writer: &Plan, reader: &apache_avro::Schema, payload: &[u8]) -> Result<Vec<u8>, String> {
    let value = apache_avro::from_avro_datum(writer.schema(), &mut &payload[..], Some(reader))
        .map_err(|e| format!("cannot resolve to the reader schema: {e}"))?;
    apache_avro::to_avro_datum(reader, value).map_err(|e| format!("reader schema: {e}"))
}

/// Why a schema could not be fetched and compiled.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Schema(String),
}

/// The schema with id `id`, with the references it names, compiled.
async fn fetch_compiled(registry: &Registry, id: u32) -> Result<Compiled, FetchError> {
    let schema = registry.schema(id).await?;
    let references = referenced(registry, &schema).await?;
    compile(&schema, &references).map_err(FetchError::Schema)
}

/// The schemas `schema` refers to, as (reference name, text), depth first
/// (a reference's own references before it).
async fn referenced(
    registry: &Registry,
    schema: &RegisteredSchema,
) -> Result<Vec<(String, String)>, RegistryError> {
    let mut texts = Vec::new();
    let mut stack: Vec<registry::Reference> = schema.references.iter().rev().cloned().collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(r) = stack.pop() {
        if !seen.insert((r.subject.clone(), r.version)) {
            continue;
        }
        let v = registry.version(&r.subject, &r.version.to_string()).await?;
        stack.extend(v.schema.references.iter().rev().cloned());
        texts.push((r.name, v.schema.schema));
    }
    texts.reverse();
    Ok(texts)
}

/// Compiles a registered schema by its type (whatever format the topic
/// was configured with: the id decides).
fn compile(schema: &RegisteredSchema, references: &[(String, String)]) -> Result<Compiled, String> {
    match schema.schema_type {
        SchemaType::Avro => {
            let texts: Vec<String> = references.iter().map(|(_, t)| t.clone()).collect();
            Plan::parse(&schema.schema, &texts)
                .map(Compiled::Avro)
                .map_err(|e| e.to_string())
        }
        SchemaType::Protobuf => {
            protobuf::Proto::parse(&schema.schema, references).map(Compiled::Protobuf)
        }
        SchemaType::Json => {
            json_schema::JsonSchema::parse(&schema.schema, references).map(Compiled::Json)
        }
    }
}

fn registry_of(config: &FormatConfig) -> Result<Registry, FormatError> {
    let settings = config
        .registry
        .as_ref()
        .ok_or_else(|| FormatError::Schema {
            what: "formats".into(),
            why: "a format other than json needs a schema registry (--registry-url)".into(),
        })?;
    Ok(Registry::new(settings)?)
}

/// A writer schema of the output, with its registry id.
#[derive(Debug)]
struct Writer {
    id: u32,
    schema: Compiled,
    /// Protobuf: the message written and its indexes.
    message: Option<(prost_reflect::MessageDescriptor, Vec<i64>)>,
    /// For reasons: the schema's name.
    name: String,
}

impl Writer {
    fn new(id: u32, schema: Compiled) -> Result<Self, String> {
        let message = match &schema {
            Compiled::Protobuf(p) => {
                let name = p.first_name();
                Some(p.named(&name)?)
            }
            _ => None,
        };
        let name = schema.record_name();
        Ok(Self {
            id,
            schema,
            message,
            name,
        })
    }
}

/// One output part's writer schema: fixed, or the subject's latest.
#[derive(Debug)]
struct Output {
    subject: String,
    writer: RwLock<Arc<Writer>>,
    /// Follows the subject's latest version.
    latest: bool,
}

/// The sink edge: the last stage's JSON to framed values and keys.
#[derive(Debug)]
pub struct Encoder {
    registry: Registry,
    value: Option<Output>,
    key: Option<Output>,
    refresh: Duration,
    /// (input schema id, output schema id) -> how many leading output
    /// fields are the input's ([`avro::Plan::prefix_of`]).
    prefixes: Mutex<HashMap<(u32, u32), Option<usize>>>,
}

/// The sink edge for one batch: every output value and key of `output`
/// re-encoded with `encoder`; with `inputs` (the batch's decoder and what
/// it decoded from `records`), an Avro output that only appends members to
/// its Avro input reuses the input's bytes. Returns the inputs whose
/// outputs do not fit, with the reason.
pub fn encode_outputs(
    encoder: &Encoder,
    inputs: Option<(&Decoder, &Decoded)>,
    output: &mut crate::stages::Output,
    records: &[rskafka::record::RecordAndOffset],
) -> Vec<(i64, String)> {
    let batch = BatchEncoder {
        encoder,
        value: encoder.value.as_ref().map(|o| (o, o.writer())),
        key: encoder.key.as_ref().map(|o| (o, o.writer())),
        inputs: inputs.filter(|(d, _)| d.reusable()),
        records,
        reuse: RefCell::default(),
    };
    let value = |offset: i64, json: &[u8], buf: &mut Vec<u8>| batch.value(offset, json, buf);
    let key = |_: i64, json: &[u8], buf: &mut Vec<u8>| {
        batch.key.as_ref().map(|(o, w)| encode(o, w, json, buf))
    };
    output.encode(&value, &key)
}

/// One batch's encoding: the writer schemas are read once, and the input
/// schema last reused is kept, so most records take no lock.
struct BatchEncoder<'a> {
    encoder: &'a Encoder,
    value: Option<(&'a Output, Arc<Writer>)>,
    key: Option<(&'a Output, Arc<Writer>)>,
    /// The batch's decoder and what it decoded, when outputs may reuse
    /// their input's payload.
    inputs: Option<(&'a Decoder, &'a Decoded)>,
    records: &'a [rskafka::record::RecordAndOffset],
    reuse: RefCell<Reuse>,
}

/// What [`BatchEncoder`] keeps between records.
#[derive(Default)]
struct Reuse {
    /// The input schema id last seen and how many leading output fields
    /// are its ([`avro::Plan::prefix_of`]; `None`: its payload cannot be
    /// reused).
    last: Option<(u32, Option<usize>)>,
    /// The appended members of the record at hand, as a JSON object.
    tail: Vec<u8>,
}

impl BatchEncoder<'_> {
    /// Output value `json` made from the input at `offset`, framed into
    /// `out`: when both are Avro, the output's schema starts with the
    /// input's fields, and the value only appends members to the input's
    /// JSON, the input's Avro payload is written as it is and only the
    /// appended members are encoded (the bytes are the same as encoding
    /// the whole value). `None` when values are not encoded.
    fn value(&self, offset: i64, json: &[u8], out: &mut Vec<u8>) -> Option<Result<(), String>> {
        let (o, writer) = self.value.as_ref()?;
        if let Compiled::Avro(plan) = &writer.schema
            && let Some((id, payload, input)) = self.origin(offset)
        {
            let mut reuse = self.reuse.borrow_mut();
            let Reuse { last, tail } = &mut *reuse;
            let k = match *last {
                Some((i, k)) if i == id => k,
                _ => {
                    let k = self.prefix(id, writer, plan);
                    *last = Some((id, k));
                    k
                }
            };
            if let Some(k) = k
                && appended(json, input, tail)
            {
                let start = out.len();
                framing::frame(writer.id, out);
                if plan.encode_appended(payload, k, tail, out).is_ok() {
                    return Some(Ok(()));
                }
                out.truncate(start);
            }
        }
        Some(encode(o, writer, json, out))
    }

    /// The input at `offset` an output was made from: its schema id, Avro
    /// payload and JSON as the stages saw it.
    fn origin(&self, offset: i64) -> Option<(u32, &[u8], &[u8])> {
        let (_, decoded) = self.inputs?;
        let records = self.records;
        // Offsets are mostly contiguous: try the index they give first.
        let guess = usize::try_from(offset - records.first()?.offset).ok();
        let i = match guess.filter(|&i| records.get(i).is_some_and(|r| r.offset == offset)) {
            Some(i) => i,
            None => records.binary_search_by_key(&offset, |r| r.offset).ok()?,
        };
        let json = decoded.value(i).ok()??;
        let (id, payload) = framing::unframe(records[i].record.value.as_deref()?).ok()?;
        Some((id, payload, json))
    }

    /// How many leading fields of `writer`'s Avro `plan` are input schema
    /// `id`'s fields, remembered per pair of ids.
    fn prefix(&self, id: u32, writer: &Writer, plan: &avro::Plan) -> Option<usize> {
        let (decoder, _) = self.inputs?;
        let mut prefixes = self.encoder.prefixes.lock().expect("prefixes");
        if let Some(k) = prefixes.get(&(id, writer.id)) {
            return *k;
        }
        let k = match decoder.schema(id).as_deref() {
            Some(Compiled::Avro(input)) => plan.prefix_of(input),
            _ => None,
        };
        prefixes.insert((id, writer.id), k);
        k
    }
}

/// Whether `json` is the JSON object `input` with members added at its
/// end, as the stages' append verdicts make it; if so, `tail` is set to
/// the added members as a JSON object.
fn appended(json: &[u8], input: &[u8], tail: &mut Vec<u8>) -> bool {
    tail.clear();
    if json == input {
        tail.extend_from_slice(b"{}");
        return true;
    }
    let n = input.len();
    if n < 2 || json.len() <= n || input[n - 1] != b'}' || json[n - 1] != b',' {
        return false;
    }
    if json[..n - 1] != input[..n - 1] {
        return false;
    }
    tail.push(b'{');
    tail.extend_from_slice(&json[n..]);
    true
}

impl Encoder {
    /// The encoder of `config`'s output formats for `topic`; `None` when
    /// both are JSON. Resolves the writer schemas: registers a file's
    /// schema under its subject (or looks it up there without
    /// `auto_register`), or reads the subject's latest version. Waits for
    /// a registry that cannot be reached (until `stop`).
    pub async fn start(
        config: &FormatConfig,
        topic: &str,
        stop: &CancellationToken,
    ) -> Result<Option<Self>, FormatError> {
        if !config.output_value.framed() && !config.output_key.framed() {
            return Ok(None);
        }
        let registry = registry_of(config)?;
        let mut parts = Vec::new();
        for (part, format, text) in [
            (Part::Value, config.output_value, &config.value_schema),
            (Part::Key, config.output_key, &config.key_schema),
        ] {
            if !format.framed() {
                parts.push(None);
                continue;
            }
            let output = waiting(stop, || {
                writer(&registry, config, topic, part, format, text.as_deref())
            })
            .await?;
            tracing::info!(topic, part = part.as_str(), subject = %output.subject, schema_id = output.writer.read().expect("writer").id, follows_latest = output.latest, "output schema ready");
            parts.push(Some(output));
        }
        let key = parts.pop().flatten();
        let value = parts.pop().flatten();
        Ok(Some(Self {
            registry,
            value,
            key,
            refresh: config.schema_refresh,
            prefixes: Mutex::default(),
        }))
    }

    /// Reads the latest version of subjects followed, every refresh
    /// interval, until `stop`; a failure keeps the schema in use.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        if !self.value.iter().chain(&self.key).any(|o| o.latest) {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.refresh) => {}
                _ = stop.cancelled() => return,
            }
            for o in self.value.iter().chain(&self.key).filter(|o| o.latest) {
                let format = o.writer.read().expect("writer").schema.format();
                match latest(&self.registry, &o.subject, format).await {
                    Ok(w) => {
                        let mut current = o.writer.write().expect("writer");
                        if current.id != w.id {
                            tracing::info!(subject = %o.subject, from = current.id, to = w.id, "the output subject has a new latest version: writing with it");
                            *current = Arc::new(w);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(subject = %o.subject, error = %e, "cannot read the output subject's latest version; keeping the schema in use");
                    }
                }
            }
        }
    }

    /// Encodes output `value` (JSON) into `out`, framed; the reason when it
    /// does not fit. `None` when values are not encoded.
    pub fn encode_value(&self, json: &[u8], out: &mut Vec<u8>) -> Option<Result<(), String>> {
        self.value
            .as_ref()
            .map(|o| encode(o, &o.writer(), json, out))
    }
}

impl Output {
    /// The writer schema in use.
    fn writer(&self) -> Arc<Writer> {
        self.writer.read().expect("writer").clone()
    }
}

/// Encodes `json` with `o`'s `writer` schema into `out`, framed.
fn encode(o: &Output, writer: &Writer, json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    framing::frame(writer.id, out);
    let written = match (&writer.schema, &writer.message) {
        (Compiled::Avro(plan), _) => plan.encode_json(json, out).map_err(|e| e.to_string()),
        (Compiled::Protobuf(_), Some((message, indexes))) => {
            protobuf::write_indexes(indexes, out);
            protobuf::encode(message, json, out)
        }
        (Compiled::Protobuf(_), None) => Err("no Protobuf message to write".into()),
        (Compiled::Json(schema), _) => schema.check(json).map(|()| out.extend_from_slice(json)),
    };
    written.map_err(|e| {
        out.truncate(start);
        format!(
            "the output does not fit schema {} (id {}, subject {}): {e}",
            writer.name, writer.id, o.subject
        )
    })
}

/// Runs `f` until it succeeds, waiting out transient registry failures.
async fn waiting<T, F, Fut>(stop: &CancellationToken, mut f: F) -> Result<T, FormatError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, FormatError>>,
{
    let mut backoff = Backoff::broker();
    loop {
        match f().await {
            Err(FormatError::Registry(e)) if e.transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "the schema registry cannot be reached; waiting for it");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Err(FormatError::Stopped),
                }
            }
            r => return r,
        }
    }
}

/// The output part's writer schema and subject.
async fn writer(
    registry: &Registry,
    config: &FormatConfig,
    topic: &str,
    part: Part,
    format: Format,
    text: Option<&str>,
) -> Result<Output, FormatError> {
    let what = format!(
        "--output-{}schema",
        if part == Part::Key { "key-" } else { "" }
    );
    let Some(text) = text else {
        if config.subject_strategy != SubjectStrategy::Topic {
            return Err(FormatError::Schema {
                what,
                why: "the record and topic-record subject strategies name the subject after the schema's record: give the schema file".into(),
            });
        }
        let subject = format!("{topic}-{}", part.as_str());
        let w = latest(registry, &subject, format).await?;
        return Ok(Output {
            subject,
            writer: RwLock::new(Arc::new(w)),
            latest: true,
        });
    };
    let schema = RegisteredSchema {
        schema: text.to_owned(),
        schema_type: format.schema_type().expect("a framed format"),
        references: Vec::new(),
    };
    let compiled = compile(&schema, &[]).map_err(|why| FormatError::Schema {
        what: what.clone(),
        why,
    })?;
    let name = compiled.record_name();
    let subject = match config.subject_strategy {
        SubjectStrategy::Topic => format!("{topic}-{}", part.as_str()),
        SubjectStrategy::Record => name,
        SubjectStrategy::TopicRecord => format!("{topic}-{name}"),
    };
    let id = if config.auto_register {
        // The registry refuses an incompatible version (409); asking first
        // says why in words. A subject without versions accepts anything.
        match registry.compatible(&subject, &schema).await {
            Ok(false) => {
                return Err(FormatError::Schema {
                    what,
                    why: format!(
                        "the schema is not compatible with the latest version of subject {subject} under the subject's compatibility rule: make it compatible, or register it as a new subject"
                    ),
                });
            }
            Ok(true) | Err(RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        registry.register(&subject, &schema).await?
    } else {
        match registry.lookup(&subject, &schema).await {
            Ok(v) => v.id,
            Err(RegistryError::NotFound { .. }) => {
                return Err(FormatError::Schema {
                    what,
                    why: format!(
                        "the schema is not registered under subject {subject}, and --auto-register is false: register it, or allow --auto-register"
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
    };
    let writer = Writer::new(id, compiled).map_err(|why| FormatError::Schema { what, why })?;
    Ok(Output {
        subject,
        writer: RwLock::new(Arc::new(writer)),
        latest: false,
    })
}

/// The latest version of `subject`, compiled; it must be of `format`.
async fn latest(registry: &Registry, subject: &str, format: Format) -> Result<Writer, FormatError> {
    let v = registry
        .version(subject, "latest")
        .await
        .inspect(|v| tracing::debug!(subject, version = v.version, schema_id = v.id, "latest version"))
        .map_err(|e| match e {
            RegistryError::NotFound { .. } => FormatError::Schema {
                what: format!("subject {subject}"),
                why: "the registry has no version of it: register the output schema, or give it as a file (--output-schema)".into(),
            },
            e => e.into(),
        })?;
    let references = referenced(registry, &v.schema).await?;
    let what = || format!("subject {subject}");
    let compiled =
        compile(&v.schema, &references).map_err(|why| FormatError::Schema { what: what(), why })?;
    if compiled.format() != format {
        return Err(FormatError::Schema {
            what: what(),
            why: format!(
                "its latest version is a {} schema, and the output's format is {}",
                compiled.format().as_str(),
                format.as_str()
            ),
        });
    }
    Writer::new(v.id, compiled).map_err(|why| FormatError::Schema { what: what(), why })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing() -> Known {
        Known::Missing {
            reason: "404".into(),
            until: Instant::now() + MISSING_TTL,
        }
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_least_recently_used() {
        let mut c = Cache {
            capacity: 2,
            ..Cache::default()
        };
        c.put(1, missing());
        c.put(2, missing());
        assert!(c.get(1).is_some(), "1 is used again, so 2 is the oldest");
        c.put(3, missing());
        assert_eq!(c.entries.len(), 2);
        assert!(c.get(2).is_none());
        assert!(c.get(1).is_some() && c.get(3).is_some());
    }

    #[test]
    fn appended_members_are_found_only_after_an_unchanged_input() {
        let input = br#"{"a":1,"b":"x"}"#;
        let tail_of = |json: &[u8]| {
            let mut tail = b"stale".to_vec();
            appended(json, input, &mut tail).then_some(tail)
        };
        assert_eq!(tail_of(input).as_deref(), Some(&b"{}"[..]));
        assert_eq!(
            tail_of(br#"{"a":1,"b":"x","c":true,"d":[1]}"#).as_deref(),
            Some(&br#"{"c":true,"d":[1]}"#[..])
        );
        assert_eq!(tail_of(br#"{"a":2,"b":"x","c":true}"#), None);
        assert_eq!(tail_of(br#"{"b":"x","c":true}"#), None);
    }

    #[test]
    fn a_404_is_believed_for_a_while_only() {
        let mut c = Cache {
            capacity: 10,
            ..Cache::default()
        };
        c.put(
            7,
            Known::Missing {
                reason: "404".into(),
                until: Instant::now() - Duration::from_millis(1),
            },
        );
        assert!(c.get(7).is_none(), "an expired 404 is asked again");
    }
}
