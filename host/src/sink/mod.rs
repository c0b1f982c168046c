//! The sink: produces a processed batch to the output topic and its dead
//! letters to the dead-letter topic, and returns only when the brokers have
//! acknowledged every record (acks=all).
//!
//! - [`partitioner`]: the Java client's murmur2 key partitioning.
//! - [`dead_letter`]: how a dead letter is written (original bytes, reason
//!   headers).
//! - [`refusal`]: which produce errors are retried, which refuse records,
//!   which stop the pipeline.
//!
//! Records are grouped per destination partition and produced concurrently,
//! one request per partition and size chunk. A produce that failed in a way
//! retrying can fix is retried with a logged backoff until it succeeds. An
//! output record its topic refuses (too large, invalid) goes to the
//! dead-letter topic with the broker's error; a refused dead letter, side
//! record or checkpoint is a [`SinkError`]. The sink never skips a record:
//! a batch's offsets are only reported delivered once all its records are
//! written somewhere.

pub mod dead_letter;
pub mod partitioner;
pub mod refusal;
pub mod sequences;
pub mod transaction;

pub use refusal::SinkError;
use refusal::{Refusal, classify, code_of};
use sequences::Idempotence;
use transaction::{Transactions, TxnError};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use rskafka::chrono::Utc;
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::{EncodedRecords, Record, RecordAndOffset};
use tokio::sync::OnceCell;

use kafka_protocol::ResponseError;

use crate::backoff::Backoff;
use crate::kafka::{ErrorName, Kafka, KafkaError, timed};
use stage_sdk::json::decimal;

use crate::stages::{ChainOutput, DeadLetter, SideOut};

/// Header naming the source topic of an output or dead-letter record.
pub const SOURCE_TOPIC: &str = "pipeline.source.topic";
/// Header naming the source partition.
pub const SOURCE_PARTITION: &str = "pipeline.source.partition";
/// Header naming the source offset.
pub const SOURCE_OFFSET: &str = "pipeline.source.offset";

/// Largest payload sent in one produce request (Kafka's default
/// `message.max.bytes` is 1 MiB per record batch).
const MAX_REQUEST_BYTES: usize = 768 * 1024;

/// How record batches to a topic are compressed (`none`, `gzip`,
/// `snappy`, `lz4`, `zstd`): Kafka's `compression.type`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Codec {
    fn compression(self) -> Compression {
        match self {
            Codec::None => Compression::NoCompression,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

/// One destination topic with lazily opened partition clients.
#[derive(Debug)]
struct TopicWriter {
    topic: String,
    partitions: Vec<OnceCell<Arc<PartitionClient>>>,
    compression: Compression,
}

impl TopicWriter {
    fn new(topic: &str, partitions: i32, codec: Codec) -> Self {
        Self {
            topic: topic.into(),
            partitions: (0..partitions).map(|_| OnceCell::new()).collect(),
            compression: codec.compression(),
        }
    }

    /// Destination partition: murmur2 of the key, like the Java client; an
    /// unkeyed record follows its source partition, so order is kept.
    fn partition_of(&self, key: Option<&[u8]>, source_partition: i32) -> i32 {
        let n = self.partitions.len() as i32;
        match key {
            Some(k) => partitioner::partition_for_key(k, n),
            None => source_partition.rem_euclid(n),
        }
    }
}

/// The dead-letter topic of a batch: the one for every input, or the
/// input's own.
enum DeadLetterWriter<'a> {
    One(&'a TopicWriter),
    Own(Arc<TopicWriter>),
}

impl std::ops::Deref for DeadLetterWriter<'_> {
    type Target = TopicWriter;
    fn deref(&self) -> &TopicWriter {
        match self {
            DeadLetterWriter::One(w) => w,
            DeadLetterWriter::Own(w) => w,
        }
    }
}

/// Counts of one delivered batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Records written to the output topic and the routes' topics (a
    /// record routed to two routes counts twice).
    pub output: u64,
    /// Records written to the dead-letter topic.
    pub dead_letters: u64,
    /// Records written to side output topics.
    pub side: u64,
}

/// Writes processed batches.
#[derive(Debug)]
pub struct Sink {
    kafka: Kafka,
    output: TopicWriter,
    /// The one dead-letter topic, or `None`: each input's own, opened as
    /// other topics on first use.
    dlq: Option<TopicWriter>,
    /// Compression of dead-letter batches.
    dlq_codec: Codec,
    /// The topics of routes 1.. ([`crate::stages::RouteTable`]), by route
    /// number - 1; opened as side topics.
    routes: Vec<String>,
    /// Side output, state and per-input dead-letter topics, opened (and
    /// created) on first use.
    others: Mutex<HashMap<String, Arc<OnceCell<Arc<TopicWriter>>>>>,
    /// `Some((partitions, replication))` to create missing side topics.
    create: Option<(i32, i16)>,
    /// Compression of side-output and state topics (the output's).
    others_codec: Codec,
    /// The transactional producer every record goes through (exactly-once).
    txn: Option<Arc<Transactions>>,
    /// The idempotent producer of at-least-once delivery (`--idempotence`).
    idempotence: Option<Arc<Idempotence>>,
}

impl Sink {
    /// A sink for `output` with its partition count and compression, and
    /// dead letters to one topic (its name and partition count) or, with
    /// `None`, to each input's `<input>-dlq`, compressed with the codec;
    /// other topics take the output's compression and are created with
    /// `create` when missing.
    pub fn new(
        kafka: Kafka,
        output: (&str, i32, Codec),
        dlq: (Option<(&str, i32)>, Codec),
        create: Option<(i32, i16)>,
    ) -> Self {
        Self {
            kafka,
            output: TopicWriter::new(output.0, output.1, output.2),
            dlq: dlq.0.map(|(t, n)| TopicWriter::new(t, n, dlq.1)),
            dlq_codec: dlq.1,
            routes: Vec::new(),
            others: Mutex::default(),
            create,
            others_codec: output.2,
            txn: None,
            idempotence: None,
        }
    }

    /// This sink writing routed records to the topics of `routes`.
    pub fn with_routes(mut self, routes: &crate::stages::RouteTable) -> Self {
        self.routes = routes.topics().map(str::to_owned).collect();
        self
    }

    /// This sink writing every batch with `idempotence`'s producer id and
    /// sequences (at-least-once without duplicates from retries).
    pub fn with_idempotence(mut self, idempotence: Arc<Idempotence>) -> Self {
        self.idempotence = Some(idempotence);
        self
    }

    /// This sink writing every record inside `txn`'s transactions.
    pub fn with_transactions(mut self, txn: Arc<Transactions>) -> Self {
        self.txn = Some(txn);
        self
    }

    /// The transactional producer, with exactly-once delivery.
    pub fn transactions(&self) -> Option<&Arc<Transactions>> {
        self.txn.as_ref()
    }

    /// The writer of a side or state topic, creating the topic if needed
    /// and retrying until the broker answers.
    async fn other(&self, topic: &str) -> Arc<TopicWriter> {
        self.writer(topic, self.others_codec).await
    }

    /// The dead-letter writer for records of input `topic`.
    async fn dead_letters_of(&self, topic: &str) -> DeadLetterWriter<'_> {
        match &self.dlq {
            Some(one) => DeadLetterWriter::One(one),
            None => DeadLetterWriter::Own(
                self.writer(
                    &format!("{topic}{}", crate::source::inputs::DEAD_LETTER_SUFFIX),
                    self.dlq_codec,
                )
                .await,
            ),
        }
    }

    /// The writer of `topic` opened on first use with `codec`, creating
    /// the topic if needed and retrying until the broker answers.
    async fn writer(&self, topic: &str, codec: Codec) -> Arc<TopicWriter> {
        let cell = self
            .others
            .lock()
            .expect("topic writers")
            .entry(topic.to_owned())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let mut backoff = Backoff::broker();
            loop {
                match self.kafka.ensure_topic(topic, self.create).await {
                    Ok(n) => return Arc::new(TopicWriter::new(topic, n, codec)),
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(topic, error = %e, retry_in = ?delay, "cannot open side topic; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        })
        .await
        .clone()
    }

    /// Produces side records (from a batch or a stage timer) of source
    /// partition `partition`: keyed ones by murmur2, others to the source
    /// partition's number. Returns the count.
    pub async fn deliver_side(&self, partition: i32, side: &[SideOut]) -> Result<u64, SinkError> {
        let mut groups: BTreeMap<(&str, i32), Chunks> = BTreeMap::new();
        let mut writers: HashMap<&str, Arc<TopicWriter>> = HashMap::new();
        let now = Utc::now().timestamp_millis();
        for (i, r) in side.iter().enumerate() {
            if !writers.contains_key(r.topic.as_str()) {
                writers.insert(&r.topic, self.other(&r.topic).await);
            }
            let p = writers[r.topic.as_str()].partition_of(r.key.as_deref(), partition);
            groups.entry((&r.topic, p)).or_default().push(
                i,
                r.key.as_deref(),
                Some(&r.value),
                [],
                now,
            );
        }
        let sends = groups.into_iter().map(|((topic, p), records)| {
            self.produce_all(&writers[topic], p, records, "a side record")
        });
        join_all(sends)
            .await
            .into_iter()
            .collect::<Result<(), _>>()?;
        Ok(side.len() as u64)
    }

    /// Produces `record` to `topic`/`partition` (modulo the topic's
    /// partition count), retrying until acknowledged; `what` names it in a
    /// refusal.
    pub async fn produce_to(
        &self,
        topic: &str,
        partition: i32,
        record: Record,
        what: &'static str,
    ) -> Result<(), SinkError> {
        let writer = self.other(topic).await;
        let p = partition.rem_euclid(writer.partitions.len() as i32);
        let mut chunks = Chunks::default();
        chunks.push_record(0, &record);
        self.produce_all(&writer, p, chunks, what).await
    }

    /// Produces the output records and dead letters of one processed batch
    /// of `topic`/`partition`, retrying until every record is acknowledged.
    /// Output records the output topic refuses become dead letters with the
    /// broker's error; a refused dead letter is an error.
    pub async fn deliver(
        &self,
        topic: &str,
        partition: i32,
        input: &[RecordAndOffset],
        out: &ChainOutput,
    ) -> Result<Delivered, SinkError> {
        // Output records are encoded straight from the chain's buffers, with
        // the source headers written in place: no Kafka record per message.
        let source_partition = decimal(i64::from(partition), &mut [0u8; 20]).to_vec();
        let encode_output = |chunks: &mut Chunks, i: usize| {
            let r = out.output.get(i);
            let mut offset = [0u8; 20];
            let offset = decimal(r.source_offset, &mut offset);
            let headers = r.headers().filter(|(k, _)| !is_source_header(k)).chain([
                (SOURCE_TOPIC.as_bytes(), topic.as_bytes()),
                (SOURCE_PARTITION.as_bytes(), source_partition.as_slice()),
                (SOURCE_OFFSET.as_bytes(), offset),
            ]);
            chunks.push(i, r.key, r.value, headers, r.timestamp_ms);
        };
        // Each record goes to its routes (a copy to each), or to the output
        // topic when it has none: grouped by (route number, partition).
        let n = out.output.len();
        let used = (0..n).fold(0u64, |m, i| m | out.output.routes_of(i));
        let mut writers: Vec<Option<Arc<TopicWriter>>> = vec![None; self.routes.len() + 1];
        for (bit, writer) in writers.iter_mut().enumerate().skip(1) {
            if used & (1 << bit) != 0 {
                *writer = Some(self.other(&self.routes[bit - 1]).await);
            }
        }
        let writer_of = |bit: usize| -> &TopicWriter {
            match &writers[bit] {
                Some(w) => w,
                None => &self.output,
            }
        };
        let mut outputs: BTreeMap<(usize, i32), Chunks> = BTreeMap::new();
        let mut copies = 0u64;
        for (i, r) in out.output.iter().enumerate() {
            let mask = out.output.routes_of(i).max(1);
            for bit in (0..64).filter(|b| mask & (1 << b) != 0) {
                let p = writer_of(bit).partition_of(r.key, partition);
                encode_output(outputs.entry((bit, p)).or_default(), i);
                copies += 1;
            }
        }
        let sends = outputs.into_iter().map(|((bit, p), chunks)| {
            let writer = writer_of(bit);
            async move {
                let refused = self
                    .produce_sorting(writer, p, chunks, &encode_output, "an output record")
                    .await?;
                Ok::<_, SinkError>((writer.topic.as_str(), refused))
            }
        });
        let (outputs, dead) = tokio::join!(
            join_all(sends),
            self.deliver_dead(topic, partition, input, &out.dead)
        );
        dead?;
        let mut refused = Vec::new();
        for r in outputs {
            let (to, records) = r?;
            refused.extend(records.into_iter().map(|(i, e)| (to, i, e)));
        }
        // Output records their topic refused: their inputs are dead
        // letters, once each, with the broker's error (copies written to
        // other routes stay: a re-drive may write those again).
        let mut bounced: Vec<DeadLetter> = Vec::new();
        for (to, i, error) in refused {
            copies -= 1;
            let offset = out.output.get(i).source_offset;
            // Inputs are in offset order, then the undecodable ones.
            let Some(at) = input.iter().position(|r| r.offset == offset) else {
                continue;
            };
            if bounced.iter().any(|d| d.input == at) {
                continue;
            }
            tracing::warn!(topic = %to, source_partition = partition, source_offset = offset, error = %error, "the output topic refused a record; its input goes to the dead-letter topic");
            bounced.push(DeadLetter {
                input: at,
                stage: "sink".into(),
                reason: format!("output topic {to} refused the record: {error}"),
                stage_error: false,
            });
        }
        self.deliver_dead(topic, partition, input, &bounced).await?;
        let side = if out.side.is_empty() {
            0
        } else {
            self.deliver_side(partition, &out.side).await?
        };
        Ok(Delivered {
            output: copies,
            dead_letters: out.dead.len() as u64 + bounced.len() as u64,
            side,
        })
    }

    /// Produces the dead letters `dead` of inputs of `topic`/`partition`.
    /// A dead letter its topic refuses for its size or content is written
    /// as a reference instead ([`dead_letter::reference`]: where the input
    /// is, its sizes, the reason and a prefix of its value), so the
    /// partition moves on; a refused reference is an error.
    async fn deliver_dead(
        &self,
        topic: &str,
        partition: i32,
        input: &[RecordAndOffset],
        dead: &[DeadLetter],
    ) -> Result<(), SinkError> {
        let records: Vec<Record> = dead
            .iter()
            .map(|d| dead_letter::record(&input[d.input], d, topic, partition))
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let encode = |chunks: &mut Chunks, i: usize| chunks.push_record(i, &records[i]);
        let dlq = self.dead_letters_of(topic).await;
        let dlq: &TopicWriter = &dlq;
        let mut groups: BTreeMap<i32, Chunks> = BTreeMap::new();
        for (i, d) in dead.iter().enumerate() {
            let src = &input[d.input];
            let p = dlq.partition_of(src.record.key.as_deref(), partition);
            encode(groups.entry(p).or_default(), i);
        }
        let sends = groups.into_iter().map(|(p, chunks)| async move {
            let refused = self
                .produce_sorting(dlq, p, chunks, &encode, "a dead letter")
                .await?;
            for (i, error) in refused {
                let d = &dead[i];
                let src = &input[d.input];
                tracing::warn!(topic = %dlq.topic, source_partition = partition, source_offset = src.offset, error = %error, "the dead-letter topic refused a dead letter; writing a reference to its input instead");
                let reference = dead_letter::reference(src, d, topic, partition, &error);
                let mut one = Chunks::default();
                one.push_record(0, &reference);
                self.produce_all(dlq, p, one, "a dead letter's reference")
                    .await?;
            }
            Ok::<_, SinkError>(())
        });
        join_all(sends).await.into_iter().collect()
    }

    async fn client(
        &self,
        writer: &TopicWriter,
        p: i32,
    ) -> Result<Arc<PartitionClient>, KafkaError> {
        writer.partitions[p as usize]
            .get_or_try_init(|| self.kafka.partition(&writer.topic, p))
            .await
            .cloned()
    }

    /// Produces `chunks` to one partition, in order, retrying each chunk
    /// until acknowledged; any refusal is an error naming `what`.
    async fn produce_all(
        &self,
        writer: &TopicWriter,
        p: i32,
        chunks: Chunks,
        what: &'static str,
    ) -> Result<(), SinkError> {
        for (chunk, _) in chunks.0 {
            let chunk = Arc::new(chunk);
            if let Err(refused) = self
                .produce_chunk(writer, p, chunk, writer.compression)
                .await
            {
                return Err(refused.stop(&writer.topic, p, what));
            }
        }
        Ok(())
    }

    /// Like [`Sink::produce_all`], but a chunk refused for its records is
    /// sent again record by record (`encode` writes record `i` into a
    /// chunk), so the records the topic takes are written and the ones it
    /// refuses are returned with the broker's error. A record refused alone
    /// as too large is tried once more zstd-compressed (the topic's limit
    /// applies to the compressed batch) when its topic's compression is
    /// weaker.
    async fn produce_sorting(
        &self,
        writer: &TopicWriter,
        p: i32,
        chunks: Chunks,
        encode: &(impl Fn(&mut Chunks, usize) + Sync),
        what: &'static str,
    ) -> Result<Vec<(usize, String)>, SinkError> {
        let mut refused = Vec::new();
        // Where a record sent alone went: written, refused (kept with the
        // broker's error), or a refusal that stops the pipeline.
        let mut sort = |i: usize, result: Result<(), Refusal>| match result {
            Ok(()) => Ok(()),
            Err(Refusal::Records(e)) => {
                refused.push((i, ErrorName(e).to_string()));
                Ok(())
            }
            Err(other) => Err(other.stop(&writer.topic, p, what)),
        };
        for (chunk, tags) in chunks.0 {
            let chunk = Arc::new(chunk);
            let error = match self
                .produce_chunk(writer, p, chunk.clone(), writer.compression)
                .await
            {
                Ok(()) => continue,
                Err(Refusal::Records(e)) => e,
                Err(other) => return Err(other.stop(&writer.topic, p, what)),
            };
            if let [one] = tags[..] {
                sort(one, self.compressed_retry(writer, p, chunk, error).await)?;
                continue;
            }
            tracing::info!(topic = %writer.topic, partition = p, records = tags.len(), error = %ErrorName(error), "a produce was refused; sending its records one by one");
            for i in tags {
                let mut single = Chunks::default();
                encode(&mut single, i);
                let (chunk, _) = single.0.pop().expect("one record encoded");
                let chunk = Arc::new(chunk);
                let result = match self
                    .produce_chunk(writer, p, chunk.clone(), writer.compression)
                    .await
                {
                    Err(Refusal::Records(e)) => self.compressed_retry(writer, p, chunk, e).await,
                    other => other,
                };
                sort(i, result)?;
            }
        }
        Ok(refused)
    }

    /// One record refused with `error`: sent again zstd-compressed when the
    /// refusal is its size and the topic's compression is not zstd already;
    /// else the same refusal.
    async fn compressed_retry(
        &self,
        writer: &TopicWriter,
        p: i32,
        record: Arc<EncodedRecords>,
        error: ResponseError,
    ) -> Result<(), Refusal> {
        let too_large = matches!(
            error,
            ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge
        );
        if !too_large || matches!(writer.compression, Compression::Zstd) {
            return Err(Refusal::Records(error));
        }
        tracing::info!(topic = %writer.topic, partition = p, bytes = record.encoded_size(), "a record too large for its topic is sent again zstd-compressed");
        self.produce_chunk(writer, p, record, Compression::Zstd)
            .await
    }

    /// Produces one chunk, retrying what retrying can fix; the
    /// [`Refusal`] when the brokers refuse it for good. With exactly-once
    /// the chunk goes into the open transaction, with the partition's next
    /// sequence number (a retry keeps it, so the broker drops a duplicate).
    async fn produce_chunk(
        &self,
        writer: &TopicWriter,
        p: i32,
        records: Arc<EncodedRecords>,
        compression: Compression,
    ) -> Result<(), Refusal> {
        let mut lane = match (&self.txn, &self.idempotence) {
            (Some(txn), _) => {
                if let Some(doom) = txn.doomed() {
                    // Nothing more joins a transaction that is to be
                    // aborted: the membership aborts it soon.
                    return Err(Refusal::Transaction(doom.why));
                }
                let lane = txn.lane(&writer.topic, p).await;
                match txn.add_partition(&writer.topic, p).await {
                    Ok(()) => {}
                    Err(e @ TxnError::Denied(_)) => return Err(Refusal::Fatal(e.to_string())),
                    Err(e) => return Err(Refusal::Transaction(e.to_string())),
                }
                Some(lane)
            }
            (None, Some(idem)) => Some(idem.sequences.lane(&writer.topic, p).await),
            (None, None) => None,
        };
        let mut backoff = Backoff::broker();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match self.client(writer, p).await {
                Ok(client) => {
                    timed(
                        || {
                            format!(
                                "producing {} records to {}/{p}",
                                records.len(),
                                writer.topic
                            )
                        },
                        self.kafka.request_timeout(),
                        // The encoded bytes are shared with the request, not
                        // copied, so a retry costs no re-encoding.
                        client.produce_encoded_as(
                            records.clone(),
                            compression,
                            lane.as_ref().map(|l| l.batch()),
                        ),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            // A retry of a batch the broker had written: it is there once.
            let duplicate = lane.is_some()
                && matches!(&result, Err(e) if code_of(e) == Some(ResponseError::DuplicateSequenceNumber));
            match result.map_err(|e| (e, duplicate)) {
                Ok(_) | Err((_, true)) => {
                    if let Some(lane) = &mut lane {
                        lane.advance(records.len());
                    }
                    if attempt > 1 {
                        tracing::info!(topic = %writer.topic, partition = p, attempt, "produce succeeded after retries");
                    }
                    return Ok(());
                }
                Err((e, false)) => {
                    // The idempotent producer's state is gone or out of
                    // step at the broker (it expired, or a batch was lost):
                    // a new producer id, sequences from 0, and the chunk
                    // again (it may be written twice, as without
                    // idempotence; nothing is lost).
                    if let (None, Some(idem), Some(code)) =
                        (&self.txn, &self.idempotence, code_of(&e))
                        && sequences::lost(code)
                    {
                        let failed = lane
                            .as_ref()
                            .map(|l| (l.batch().producer_id, l.batch().producer_epoch))
                            .unwrap_or_default();
                        drop(lane.take());
                        tracing::warn!(topic = %writer.topic, partition = p, error = %e, "the broker lost this idempotent producer's sequence; continuing with a new producer id");
                        if let Err(e) = idem.reset(failed).await {
                            let delay = backoff.next_delay();
                            tracing::warn!(error = %e, retry_in = ?delay, "cannot get a new producer id; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        lane = Some(idem.sequences.lane(&writer.topic, p).await);
                        continue;
                    }
                    if let Some(refused) = classify(&e) {
                        return Err(refused);
                    }
                    // Kafka 4's transaction verification (KIP-890) answers the
                    // first produce after a commit with NOT_ENOUGH_REPLICAS (its
                    // name for CONCURRENT_TRANSACTIONS) while the last commit's
                    // markers are written; that clears within milliseconds.
                    if self.txn.is_some()
                        && attempt <= transaction::CONCURRENT_RETRIES
                        && code_of(&e) == Some(ResponseError::NotEnoughReplicas)
                    {
                        tracing::debug!(topic = %writer.topic, partition = p, attempt, "transaction still settling; produce retried");
                        tokio::time::sleep(transaction::CONCURRENT_RETRY).await;
                        continue;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(topic = %writer.topic, partition = p, records = records.len(), attempt, error = %e, retry_in = ?delay, "produce failed; retrying (nothing is skipped)");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The records bound for one partition, encoded in chunks of at most
/// [`MAX_REQUEST_BYTES`] each, in order, each with the tags (indices) of
/// its records, so a refused chunk can be sent again record by record.
#[derive(Debug, Default)]
struct Chunks(Vec<(EncodedRecords, Vec<usize>)>);

impl Chunks {
    /// Appends one record tagged `tag`, starting a new chunk when this one
    /// is full.
    fn push<'a>(
        &mut self,
        tag: usize,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
        timestamp_ms: i64,
    ) {
        let size = key.map_or(0, <[u8]>::len)
            + value.map_or(0, <[u8]>::len)
            + headers
                .clone()
                .into_iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let full = self
            .0
            .last()
            .is_none_or(|(c, _)| !c.is_empty() && c.encoded_size() + size > MAX_REQUEST_BYTES);
        if full {
            self.0.push((EncodedRecords::new(), Vec::new()));
        }
        let (chunk, tags) = self.0.last_mut().expect("pushed above");
        chunk.push(key, value, headers, timestamp_ms);
        tags.push(tag);
    }

    /// Appends a Kafka record tagged `tag`.
    fn push_record(&mut self, tag: usize, r: &Record) {
        self.push(
            tag,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter(),
            r.timestamp.timestamp_millis(),
        );
    }
}

/// True for the headers the sink writes itself; an input record's own copy
/// (from an earlier pipeline) is replaced, not duplicated.
fn is_source_header(name: &[u8]) -> bool {
    [SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET]
        .iter()
        .any(|h| h.as_bytes() == name)
}

/// Header values naming where a record came from.
pub fn source_headers(topic: &str, partition: i32, offset: i64) -> [(String, Vec<u8>); 3] {
    [
        (SOURCE_TOPIC.into(), topic.as_bytes().to_vec()),
        (SOURCE_PARTITION.into(), partition.to_string().into_bytes()),
        (SOURCE_OFFSET.into(), offset.to_string().into_bytes()),
    ]
}
