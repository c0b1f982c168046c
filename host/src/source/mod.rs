//! The source: reads one input partition in offset order, in batches.
//!
//! Each partition has a [`PartitionSource`] that long-polls the broker
//! (`fetch_records` with a byte budget and a max wait), drops records below
//! the offset it asked for (a fetch may start inside a record batch), and
//! retries failed or timed-out fetches with a logged backoff. It never
//! skips a record: the next fetch starts right after the last record
//! returned.
//!
//! [`inputs`] says which topics are read (names and a pattern).

pub mod inputs;

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{OffsetAt, PartitionClient, Undecodable};
use rskafka::record::RecordAndOffset;
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::kafka::{Kafka, KafkaError, timed};

/// Where to start a partition that has no committed position.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum StartFrom {
    /// The oldest record still in the log.
    #[default]
    Earliest,
    /// Only records produced after start.
    Latest,
}

/// Fetch tuning.
#[derive(Debug, Clone, Copy)]
pub struct FetchSettings {
    /// Upper bound of bytes per fetch.
    pub max_bytes: i32,
    /// How long the broker may wait for data before answering. Default
    /// 500 ms, as the Java consumer's `fetch.max.wait.ms`: Apache Kafka
    /// answers a long poll as soon as a record arrives, so a longer wait
    /// costs no latency and saves the host's and the broker's CPU while a
    /// partition is idle (docs/kafka.md, "Defaults for Apache Kafka";
    /// `tests/scripts/fetch-wait.sh` measures it). A broker that answers an
    /// empty long poll only at its end wants a shorter one.
    pub max_wait: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(500),
        }
    }
}

/// A batch of records fetched from one partition.
#[derive(Debug)]
pub struct Fetched {
    /// Records in offset order, none below the requested offset, none of
    /// an aborted transaction. May be empty when the fetch held only
    /// control batches or aborted records: the position still moves.
    pub records: Vec<RecordAndOffset>,
    /// What the client could not decode (a corrupt batch, a timestamp out
    /// of range), for the dead-letter topic, so the partition moves on.
    pub undecodable: Vec<Undecodable>,
    /// Where the next fetch starts: after the last complete batch read.
    pub next_offset: i64,
    /// The end a `read_committed` reader can reach when fetched: the last
    /// stable offset (the high watermark where there is none).
    pub high_watermark: i64,
}

/// Reads one partition.
#[derive(Debug)]
pub struct PartitionSource {
    kafka: Kafka,
    client: Arc<PartitionClient>,
    topic: String,
    partition: i32,
    next_offset: i64,
    start: StartFrom,
    settings: FetchSettings,
}

impl PartitionSource {
    /// Opens `topic`/`partition` and positions it per `start`.
    pub async fn open(
        kafka: &Kafka,
        topic: &str,
        partition: i32,
        start: StartFrom,
        settings: FetchSettings,
    ) -> Result<Self, KafkaError> {
        let client = kafka.partition(topic, partition).await?;
        let mut source = Self {
            kafka: kafka.clone(),
            client,
            topic: topic.into(),
            partition,
            next_offset: 0,
            start,
            settings,
        };
        source.next_offset = source.start_offset().await?;
        Ok(source)
    }

    async fn start_offset(&self) -> Result<i64, KafkaError> {
        let at = match self.start {
            StartFrom::Earliest => OffsetAt::Earliest,
            StartFrom::Latest => OffsetAt::Latest,
        };
        timed(
            || {
                format!(
                    "listing the {:?} offset of {}/{}",
                    self.start, self.topic, self.partition
                )
            },
            self.kafka.request_timeout(),
            self.client.get_offset(at),
        )
        .await
    }

    /// The partition's current end (the offset the next produced record
    /// will get).
    pub async fn end_offset(&self) -> Result<i64, KafkaError> {
        timed(
            || {
                format!(
                    "listing the latest offset of {}/{}",
                    self.topic, self.partition
                )
            },
            self.kafka.request_timeout(),
            self.client.get_offset(OffsetAt::Latest),
        )
        .await
    }

    /// Moves the position to `offset` (a committed offset).
    pub fn seek(&mut self, offset: i64) {
        self.next_offset = offset;
    }

    /// The offset the next fetch starts at.
    pub fn position(&self) -> i64 {
        self.next_offset
    }

    /// The next non-empty batch. Waits (long-polling) while the partition
    /// has no new records; retries errors with a logged backoff, forever:
    /// cancel the future to stop.
    pub async fn next_batch(&mut self) -> Fetched {
        let mut backoff = Backoff::broker();
        loop {
            match self.fetch_once().await {
                Ok(Some(batch)) => return batch,
                Ok(None) => backoff.reset(),
                Err(e) if e.is_offset_out_of_range() => {
                    // The log was truncated under us (retention) or the
                    // position is past its end: restart from the policy.
                    let reset = self.start_offset().await;
                    tracing::warn!(topic = %self.topic, partition = self.partition, offset = self.next_offset, reset_to = ?reset.as_ref().ok(), "offset out of range; resetting per --start");
                    if let Ok(offset) = reset {
                        self.next_offset = offset;
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(topic = %self.topic, partition = self.partition, offset = self.next_offset, error = %e, retry_in = ?delay, "fetch failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn fetch_once(&mut self) -> Result<Option<Fetched>, KafkaError> {
        let offset = self.next_offset;
        let wait_ms = self.settings.max_wait.as_millis() as i32;
        let fetched = timed(
            || {
                format!(
                    "fetching {}/{} at offset {offset}",
                    self.topic, self.partition
                )
            },
            self.kafka.request_timeout() + self.settings.max_wait,
            self.client
                .fetch_batch(offset, 1..self.settings.max_bytes, wait_ms),
        )
        .await?;
        let mut records = fetched.records;
        // A fetch may start inside a record batch: drop what we did not ask for.
        records.retain(|r| r.offset >= offset);
        records.sort_by_key(|r| r.offset);
        records.dedup_by_key(|r| r.offset);
        let after_records = records.last().map_or(offset, |r| r.offset + 1);
        // Past control batches and aborted records too, or a reader at the
        // tail of a transactional topic would fetch the same offset forever.
        let next = fetched.next_offset.max(after_records);
        if next == offset {
            return Ok(None);
        }
        self.next_offset = next;
        Ok(Some(Fetched {
            next_offset: next,
            records,
            undecodable: fetched.undecodable,
            high_watermark: fetched.last_stable_offset.unwrap_or(fetched.high_watermark),
        }))
    }
}

/// The chain reads the Kafka client's records in place.
impl crate::stages::InputRecord for rskafka::record::RecordAndOffset {
    fn key(&self) -> Option<&[u8]> {
        self.record.key.as_deref()
    }

    fn value(&self) -> Option<&[u8]> {
        self.record.value.as_deref()
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.record.headers.iter()
    }

    fn timestamp_ms(&self) -> i64 {
        self.record.timestamp.timestamp_millis()
    }

    fn offset(&self) -> i64 {
        self.offset
    }
}
