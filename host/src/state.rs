//! Checkpoints of stateful stages, taken with the consumer group's commits.
//!
//! After every batch the chain snapshots its stateful stages; the snapshot
//! waits in [`Checkpoints`] under the batch's end offset. When the group
//! commits offset `N` for a partition, the snapshot taken at `N` is first
//! written to the state topic (`<input>-state` by default), then the offset
//! is committed. A partition that starts at committed offset `N` (after a
//! restart, a kill -9 or a rebalance) restores the checkpoint written for
//! exactly `N`, so the state always matches the records that will be read
//! next: records after `N` are processed again from that state, and window
//! counts come out exact.
//!
//! Records of the state topic: key `<group>/<input topic>/<partition>`,
//! value a JSON object `{"offset": N, "stages": {"<name>": "<base64>"}}`,
//! written to the state topic's partition `<partition>` (modulo its count).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rskafka::chrono::Utc;
use rskafka::record::Record;

use crate::kafka::{Kafka, KafkaError};
use crate::sink::{Sink, SinkError};
use crate::source::{FetchSettings, PartitionSource, StartFrom};

/// Stage states by stage name.
pub type States = Vec<(String, Vec<u8>)>;

/// Records read per step when searching the state topic backwards.
const SCAN_STEP: i64 = 2000;

/// Snapshots waiting for their commit, per partition and batch end offset.
#[derive(Debug, Default)]
pub struct Checkpoints {
    pending: Mutex<HashMap<i32, BTreeMap<i64, Arc<States>>>>,
}

impl Checkpoints {
    /// Remembers the state after the batch of `partition` ending at `end`.
    pub fn record(&self, partition: i32, end: i64, states: States) {
        self.pending
            .lock()
            .expect("checkpoints")
            .entry(partition)
            .or_default()
            .insert(end, Arc::new(states));
    }

    /// The state taken at exactly `offset`, forgetting older ones.
    pub fn at(&self, partition: i32, offset: i64) -> Option<Arc<States>> {
        let mut pending = self.pending.lock().expect("checkpoints");
        let per = pending.get_mut(&partition)?;
        *per = per.split_off(&offset);
        per.get(&offset).cloned()
    }

    /// Like [`Checkpoints::at`], but the state is handed over once: it is
    /// forgotten with every older one (exactly-once writes each checkpoint
    /// in one transaction).
    pub fn take(&self, partition: i32, offset: i64) -> Option<Arc<States>> {
        let mut pending = self.pending.lock().expect("checkpoints");
        let per = pending.get_mut(&partition)?;
        let mut newer = per.split_off(&offset);
        let at = newer.remove(&offset);
        *per = newer;
        at
    }

    /// Forgets a partition (its worker stopped).
    pub fn forget(&self, partition: i32) {
        self.pending.lock().expect("checkpoints").remove(&partition);
    }
}

/// Where checkpoints of one pipeline go.
#[derive(Debug, Clone)]
pub struct StateTopic {
    /// The state topic.
    pub topic: String,
    /// Consumer group (part of the key: groups may share the topic).
    pub group: String,
    /// Input topic (part of the key).
    pub input: String,
}

impl StateTopic {
    fn key(&self, partition: i32) -> String {
        format!("{}/{}/{partition}", self.group, self.input)
    }

    /// Writes the checkpoint of `partition` at `offset`, retrying until the
    /// broker acknowledges it.
    pub async fn save(
        &self,
        sink: &Sink,
        partition: i32,
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
        sink.produce_to(&self.topic, partition, record, "a checkpoint")
            .await
    }

    /// The checkpoint of `partition` written for exactly `offset`, searched
    /// from the end of the state topic backwards. `None` when there is none
    /// (first run, or the state topic lost it).
    pub async fn load(
        &self,
        kafka: &Kafka,
        partition: i32,
        offset: i64,
    ) -> Result<Option<States>, KafkaError> {
        let Some(count) = kafka.partitions(&self.topic).await? else {
            return Ok(None);
        };
        let p = partition.rem_euclid(count);
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
            while source.position() < hi {
                for r in source.next_batch().await.records {
                    if r.offset >= hi || r.record.key.as_deref() != Some(key.as_bytes()) {
                        continue;
                    }
                    if let Some(states) = r.record.value.as_deref().and_then(|v| decode(v, offset))
                    {
                        found = Some(states);
                    }
                }
            }
            if found.is_some() {
                return Ok(found);
            }
            hi = lo;
        }
        Ok(None)
    }
}

/// The stage states of a checkpoint value if it was taken at `offset`.
fn decode(value: &[u8], offset: i64) -> Option<States> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    if v.get("offset")?.as_i64()? != offset {
        return None;
    }
    v.get("stages")?
        .as_object()?
        .iter()
        .map(|(name, s)| Some((name.clone(), BASE64.decode(s.as_str()?).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_keep_only_what_a_commit_can_still_ask_for() {
        let c = Checkpoints::default();
        c.record(0, 10, vec![("a".into(), vec![1])]);
        c.record(0, 20, vec![("a".into(), vec![2])]);
        c.record(0, 30, vec![("a".into(), vec![3])]);
        assert_eq!(c.at(0, 20).unwrap()[0].1, vec![2]);
        assert!(c.at(0, 10).is_none(), "older snapshots are dropped");
        assert_eq!(c.at(0, 30).unwrap()[0].1, vec![3]);
        assert!(c.at(1, 30).is_none());
        c.record(0, 40, vec![("a".into(), vec![4])]);
        assert_eq!(c.take(0, 30).unwrap()[0].1, vec![3]);
        assert!(c.take(0, 30).is_none(), "taken once");
        assert_eq!(c.at(0, 40).unwrap()[0].1, vec![4], "newer ones stay");
    }

    #[test]
    fn a_checkpoint_decodes_only_at_its_offset() {
        let v = br#"{"offset":7,"stages":{"counts":"AQI="}}"#;
        assert_eq!(decode(v, 7), Some(vec![("counts".into(), vec![1, 2])]));
        assert_eq!(decode(v, 8), None);
        assert_eq!(decode(b"not json", 7), None);
    }
}
