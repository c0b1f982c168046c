//! Checkpoints of stateful stages, taken with the consumer group's commits.
//!
//! After every batch the chain snapshots its stateful stages; the snapshot
//! waits in [`Checkpoints`] under the batch's end offset. When the group
//! commits offset `N` for a partition, the snapshot taken at `N` is first
//! written to the state topic (`<first input>-state` by default), then the offset
//! is committed. A partition that starts at committed offset `N` (after a
//! restart, a kill -9 or a rebalance) restores the checkpoint written for
//! exactly `N`, so the state always matches the records that will be read
//! next: records after `N` are processed again from that state, and window
//! counts come out exact.
//!
//! Records of the state topic: key `<group>/<input topic>/<partition>`,
//! value a JSON object `{"offset": N, "stages": {"<name>": "<base64>"}}`,
//! written to the state topic's partition `<partition>` (modulo its count;
//! the inputs' partitions of one number share it, told apart by the key).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rskafka::chrono::Utc;
use rskafka::record::Record;

use crate::kafka::{Kafka, KafkaError, TopicPartition};
use crate::sink::{Sink, SinkError};
use crate::source::{FetchSettings, PartitionSource, StartFrom};

/// Stage states by stage name.
pub type States = Vec<(String, Vec<u8>)>;

/// Records read per step when searching the state topic backwards.
const SCAN_STEP: i64 = 2000;

/// Snapshots waiting for their commit, per partition and batch end offset.
#[derive(Debug, Default)]
pub struct Checkpoints {
    pending: Mutex<HashMap<TopicPartition, BTreeMap<i64, Arc<States>>>>,
    /// The newest state of each partition (pending, committed or restored),
    /// carried to offsets that move without a snapshot of their own.
    last: Mutex<HashMap<TopicPartition, Arc<States>>>,
}

impl Checkpoints {
    /// Remembers the state after the batch of `partition` ending at `end`.
    pub fn record(&self, partition: &TopicPartition, end: i64, states: States) {
        let states = Arc::new(states);
        self.last
            .lock()
            .expect("checkpoints")
            .insert(partition.clone(), states.clone());
        self.pending
            .lock()
            .expect("checkpoints")
            .entry(partition.clone())
            .or_default()
            .insert(end, states);
    }

    /// The partition's offset moved to `end` without a new snapshot
    /// (transaction markers, aborted or undecodable records only, or a
    /// snapshot that failed): the newest state holds there too, so a
    /// commit at `end` carries a checkpoint. Nothing when no state is known
    /// (the stages started empty and saw nothing yet: a restart without a
    /// checkpoint starts them empty, which is the same).
    pub fn carry(&self, partition: &TopicPartition, end: i64) {
        let Some(states) = self
            .last
            .lock()
            .expect("checkpoints")
            .get(partition)
            .cloned()
        else {
            return;
        };
        self.pending
            .lock()
            .expect("checkpoints")
            .entry(partition.clone())
            .or_default()
            .entry(end)
            .or_insert(states);
    }

    /// Notes the state a partition starts from (restored from its
    /// checkpoint, or its stages' empty state).
    pub fn start(&self, partition: &TopicPartition, states: States) {
        self.last
            .lock()
            .expect("checkpoints")
            .insert(partition.clone(), Arc::new(states));
    }

    /// The state taken at exactly `offset`, forgetting older ones.
    pub fn at(&self, partition: &TopicPartition, offset: i64) -> Option<Arc<States>> {
        let mut pending = self.pending.lock().expect("checkpoints");
        let per = pending.get_mut(partition)?;
        *per = per.split_off(&offset);
        per.get(&offset).cloned()
    }

    /// Like [`Checkpoints::at`], but the state is handed over once: it is
    /// forgotten with every older one (exactly-once writes each checkpoint
    /// in one transaction).
    pub fn take(&self, partition: &TopicPartition, offset: i64) -> Option<Arc<States>> {
        let mut pending = self.pending.lock().expect("checkpoints");
        let per = pending.get_mut(partition)?;
        let mut newer = per.split_off(&offset);
        let at = newer.remove(&offset);
        *per = newer;
        at
    }

    /// Forgets a partition (its worker stopped).
    pub fn forget(&self, partition: &TopicPartition) {
        self.pending.lock().expect("checkpoints").remove(partition);
        self.last.lock().expect("checkpoints").remove(partition);
    }
}

/// Where checkpoints of one pipeline go.
#[derive(Debug, Clone)]
pub struct StateTopic {
    /// The state topic.
    pub topic: String,
    /// Consumer group (part of the key: groups may share the topic).
    pub group: String,
}

impl StateTopic {
    fn key(&self, partition: &TopicPartition) -> String {
        format!("{}/{}/{}", self.group, partition.topic, partition.partition)
    }

    /// Writes the checkpoint of `partition` at `offset`, retrying until the
    /// broker acknowledges it.
    pub async fn save(
        &self,
        sink: &Sink,
        partition: &TopicPartition,
        offset: i64,
        states: &States,
    ) -> Result<(), SinkError> {
        let stages: serde_json::Map<String, serde_json::Value> = states
            .iter()
            .map(|(name, s)| (name.clone(), BASE64.encode(s).into()))
            .collect();
        let value = serde_json::json!({ "offset": offset, "stages": stages });
        let record = Record {
            key: Some(self.key(partition).into_bytes()),
            value: Some(value.to_string().into_bytes()),
            headers: Default::default(),
            timestamp: Utc::now(),
        };
        sink.produce_to(&self.topic, partition.partition, record, "a checkpoint")
            .await
    }

    /// The checkpoint of `partition` written for exactly `offset`, searched
    /// from the end of the state topic backwards. `None` when there is none
    /// (first run, or the state topic lost it).
    ///
    /// The search stops at the first (newest-first) checkpoint of the
    /// partition taken before `offset`: `offset` is committed, and a
    /// checkpoint is written before its offset is committed, so nothing
    /// older can be the one. A restore reads only the tail of the state
    /// partition written since that commit, not the whole partition.
    pub async fn load(
        &self,
        kafka: &Kafka,
        partition: &TopicPartition,
        offset: i64,
    ) -> Result<Option<States>, KafkaError> {
        let Some(count) = kafka.partitions(&self.topic).await? else {
            return Ok(None);
        };
        let p = partition.partition.rem_euclid(count);
        let mut source = PartitionSource::open(
            kafka,
            &self.topic,
            p,
            StartFrom::Earliest,
            FetchSettings::default(),
        )
        .await?;
        let earliest = source.position();
        let mut hi = source.end_offset().await?;
        let key = self.key(partition);
        while hi > earliest {
            let lo = (hi - SCAN_STEP).max(earliest);
            source.seek(lo);
            let mut found = None;
            let mut older = false;
            while source.position() < hi {
                for r in source.next_batch().await.records {
                    if r.offset >= hi || r.record.key.as_deref() != Some(key.as_bytes()) {
                        continue;
                    }
                    match r.record.value.as_deref().and_then(decode) {
                        Some((at, states)) if at == offset => found = Some(states),
                        Some((at, _)) if at < offset => older = true,
                        _ => {}
                    }
                }
            }
            if found.is_some() || older {
                return Ok(found);
            }
            hi = lo;
        }
        Ok(None)
    }
}

/// The offset and stage states of a checkpoint value.
fn decode(value: &[u8]) -> Option<(i64, States)> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let offset = v.get("offset")?.as_i64()?;
    let states = v
        .get("stages")?
        .as_object()?
        .iter()
        .map(|(name, s)| Some((name.clone(), BASE64.decode(s.as_str()?).ok()?)))
        .collect::<Option<States>>()?;
    Some((offset, states))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> TopicPartition {
        TopicPartition::new("in", n)
    }

    #[test]
    fn checkpoints_keep_only_what_a_commit_can_still_ask_for() {
        let c = Checkpoints::default();
        c.record(&p(0), 10, vec![("a".into(), vec![1])]);
        c.record(&p(0), 20, vec![("a".into(), vec![2])]);
        c.record(&p(0), 30, vec![("a".into(), vec![3])]);
        assert_eq!(c.at(&p(0), 20).unwrap()[0].1, vec![2]);
        assert!(c.at(&p(0), 10).is_none(), "older snapshots are dropped");
        assert_eq!(c.at(&p(0), 30).unwrap()[0].1, vec![3]);
        assert!(c.at(&p(1), 30).is_none());
        c.record(&p(0), 40, vec![("a".into(), vec![4])]);
        assert_eq!(c.take(&p(0), 30).unwrap()[0].1, vec![3]);
        assert!(c.take(&p(0), 30).is_none(), "taken once");
        assert_eq!(c.at(&p(0), 40).unwrap()[0].1, vec![4], "newer ones stay");
    }

    #[test]
    fn a_checkpoint_decodes_with_its_offset() {
        let v = br#"{"offset":7,"stages":{"counts":"AQI="}}"#;
        assert_eq!(decode(v), Some((7, vec![("counts".into(), vec![1, 2])])));
        assert_eq!(decode(b"not json"), None);
    }

    #[test]
    fn an_offset_moved_without_a_snapshot_carries_the_newest_state() {
        let c = Checkpoints::default();
        c.carry(&p(0), 5);
        assert!(c.at(&p(0), 5).is_none(), "no state known: nothing to carry");
        c.start(&p(0), vec![("a".into(), vec![0])]);
        c.carry(&p(0), 8);
        assert_eq!(c.at(&p(0), 8).unwrap()[0].1, vec![0], "the restored state");
        c.record(&p(0), 10, vec![("a".into(), vec![1])]);
        assert_eq!(c.take(&p(0), 10).unwrap()[0].1, vec![1]);
        // Markers only after the batch: the state taken at 10 holds at 12.
        c.carry(&p(0), 12);
        assert_eq!(c.take(&p(0), 12).unwrap()[0].1, vec![1]);
        c.forget(&p(0));
        c.carry(&p(0), 14);
        assert!(c.at(&p(0), 14).is_none());
    }
}
