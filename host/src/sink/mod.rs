//! The sink: produces a processed batch to the output topic and its dead
//! letters to the dead-letter topic, and returns only when the brokers have
//! acknowledged every record (acks=all).
//!
//! - [`partitioner`]: the Java client's murmur2 key partitioning.
//! - [`dead_letter`]: how a dead letter is written (original bytes, reason
//!   headers).
//!
//! Records are grouped per destination partition and produced concurrently,
//! one request per partition and size chunk. A failed or timed-out produce is
//! retried with a logged backoff until it succeeds: the sink never skips a
//! record, so a batch's offsets are only reported delivered once all its
//! records are written somewhere.

pub mod dead_letter;
pub mod partitioner;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::{Record, RecordAndOffset};
use tokio::sync::OnceCell;

use crate::kafka::{Kafka, KafkaError, timed};
use crate::stages::{ChainOutput, OutRecord, SideOut};

/// Header naming the source topic of an output or dead-letter record.
pub const SOURCE_TOPIC: &str = "pipeline.source.topic";
/// Header naming the source partition.
pub const SOURCE_PARTITION: &str = "pipeline.source.partition";
/// Header naming the source offset.
pub const SOURCE_OFFSET: &str = "pipeline.source.offset";

/// Largest payload sent in one produce request (Kafka's default
/// `message.max.bytes` is 1 MiB per record batch).
const MAX_REQUEST_BYTES: usize = 768 * 1024;

/// One destination topic with lazily opened partition clients.
#[derive(Debug)]
struct TopicWriter {
    topic: String,
    partitions: Vec<OnceCell<Arc<PartitionClient>>>,
}

impl TopicWriter {
    fn new(topic: &str, partitions: i32) -> Self {
        Self {
            topic: topic.into(),
            partitions: (0..partitions).map(|_| OnceCell::new()).collect(),
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

/// Counts of one delivered batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Records written to the output topic.
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
    dlq: TopicWriter,
    /// Side output and state topics, opened (and created) on first use.
    others: Mutex<HashMap<String, Arc<OnceCell<Arc<TopicWriter>>>>>,
    /// `Some((partitions, replication))` to create missing side topics.
    create: Option<(i32, i16)>,
    compression: Compression,
}

impl Sink {
    /// A sink for `output` and `dlq` with their partition counts; other
    /// topics are created with `create` when missing.
    pub fn new(
        kafka: Kafka,
        output: (&str, i32),
        dlq: (&str, i32),
        create: Option<(i32, i16)>,
    ) -> Self {
        Self {
            kafka,
            output: TopicWriter::new(output.0, output.1),
            dlq: TopicWriter::new(dlq.0, dlq.1),
            others: Mutex::default(),
            create,
            compression: Compression::NoCompression,
        }
    }

    /// The writer of a side or state topic, creating the topic if needed
    /// and retrying until the broker answers.
    async fn other(&self, topic: &str) -> Arc<TopicWriter> {
        let cell = self
            .others
            .lock()
            .expect("topic writers")
            .entry(topic.to_owned())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let mut delay = Duration::from_millis(200);
            loop {
                match self.kafka.ensure_topic(topic, self.create).await {
                    Ok(n) => return Arc::new(TopicWriter::new(topic, n)),
                    Err(e) => {
                        tracing::warn!(topic, error = %e, retry_in = ?delay, "cannot open side topic; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
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
    pub async fn deliver_side(&self, partition: i32, side: &[SideOut]) -> u64 {
        let mut groups: BTreeMap<(&str, i32), Vec<Record>> = BTreeMap::new();
        let mut writers: HashMap<&str, Arc<TopicWriter>> = HashMap::new();
        for r in side {
            if !writers.contains_key(r.topic.as_str()) {
                writers.insert(&r.topic, self.other(&r.topic).await);
            }
            let p = writers[r.topic.as_str()].partition_of(r.key.as_deref(), partition);
            groups.entry((&r.topic, p)).or_default().push(Record {
                key: r.key.clone(),
                value: Some(r.value.clone()),
                headers: BTreeMap::new(),
                timestamp: Utc::now(),
            });
        }
        let sends = groups
            .into_iter()
            .map(|((topic, p), records)| self.produce_all(&writers[topic], p, records));
        join_all(sends).await;
        side.len() as u64
    }

    /// Produces `record` to `topic`/`partition` (modulo the topic's
    /// partition count), retrying until acknowledged.
    pub async fn produce_to(&self, topic: &str, partition: i32, record: Record) {
        let writer = self.other(topic).await;
        let p = partition.rem_euclid(writer.partitions.len() as i32);
        self.produce_chunk(&writer, p, vec![record]).await;
    }

    /// Produces the output records and dead letters of one processed batch
    /// of `topic`/`partition`, retrying until every record is acknowledged.
    pub async fn deliver(
        &self,
        topic: &str,
        partition: i32,
        input: &[RecordAndOffset],
        mut out: ChainOutput,
    ) -> Delivered {
        let mut groups: BTreeMap<(bool, i32), Vec<Record>> = BTreeMap::new();
        let outputs = out.output.len() as u64;
        for r in std::mem::take(&mut out.output) {
            let p = self.output.partition_of(r.key.as_deref(), partition);
            groups
                .entry((false, p))
                .or_default()
                .push(output_record(r, topic, partition));
        }
        for d in &out.dead {
            let src = &input[d.input];
            let p = self.dlq.partition_of(src.record.key.as_deref(), partition);
            groups
                .entry((true, p))
                .or_default()
                .push(dead_letter::record(src, d, topic, partition));
        }
        let sends = groups.into_iter().map(|((is_dlq, p), records)| {
            let writer = if is_dlq { &self.dlq } else { &self.output };
            self.produce_all(writer, p, records)
        });
        join_all(sends).await;
        let side = if out.side.is_empty() {
            0
        } else {
            self.deliver_side(partition, &out.side).await
        };
        Delivered {
            output: outputs,
            dead_letters: out.dead.len() as u64,
            side,
        }
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

    /// Produces `records` to one partition in size-bounded chunks, in order,
    /// retrying each chunk until acknowledged.
    async fn produce_all(&self, writer: &TopicWriter, p: i32, records: Vec<Record>) {
        let mut chunk = Vec::new();
        let mut size = 0;
        for r in records {
            let len = r.approximate_size();
            if !chunk.is_empty() && size + len > MAX_REQUEST_BYTES {
                self.produce_chunk(writer, p, std::mem::take(&mut chunk))
                    .await;
                size = 0;
            }
            size += len;
            chunk.push(r);
        }
        if !chunk.is_empty() {
            self.produce_chunk(writer, p, chunk).await;
        }
    }

    async fn produce_chunk(&self, writer: &TopicWriter, p: i32, records: Vec<Record>) {
        let mut delay = Duration::from_millis(100);
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
                        client.produce(records.clone(), self.compression),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => {
                    if attempt > 1 {
                        tracing::info!(topic = %writer.topic, partition = p, attempt, "produce succeeded after retries");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(topic = %writer.topic, partition = p, records = records.len(), attempt, error = %e, retry_in = ?delay, "produce failed; retrying (nothing is skipped)");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn timestamp(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Header values naming where a record came from.
pub fn source_headers(topic: &str, partition: i32, offset: i64) -> [(String, Vec<u8>); 3] {
    [
        (SOURCE_TOPIC.into(), topic.as_bytes().to_vec()),
        (SOURCE_PARTITION.into(), partition.to_string().into_bytes()),
        (SOURCE_OFFSET.into(), offset.to_string().into_bytes()),
    ]
}

/// The Kafka record of an output record, moving its bytes (no copy).
fn output_record(r: OutRecord, topic: &str, partition: i32) -> Record {
    let mut headers: BTreeMap<String, Vec<u8>> = r
        .headers
        .into_iter()
        .map(|(k, v)| {
            let name = String::from_utf8(k)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            (name, v)
        })
        .collect();
    headers.extend(source_headers(topic, partition, r.source_offset));
    Record {
        key: r.key,
        value: r.value,
        headers,
        timestamp: timestamp(r.timestamp_ms),
    }
}
