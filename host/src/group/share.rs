//! KIP-932 share groups (Kafka 4.1+, production-ready in 4.2): several
//! members read the same partitions, the broker hands each record to one
//! member at a time (it is *acquired*, with a lock and a delivery count),
//! and the member acknowledges records one by one: ACCEPT (done), RELEASE
//! (deliver again, to anyone) or REJECT (done, unprocessable). A record
//! delivered `share.delivery.count.limit` times is archived by the broker.
//!
//! This module holds the protocol's pieces, written by hand over
//! `kafka-protocol`'s messages as the other group calls are (`rskafka` has
//! no group APIs): [`ShareMember`] joins, heartbeats and leaves
//! (`ShareGroupHeartbeat`, to the group coordinator); [`ShareSession`]
//! fetches and acknowledges (`ShareFetch`, `ShareAcknowledge`, to each
//! partition's leader); [`Acks`] turns per-record outcomes into
//! acknowledgement batches. `pipeline/share.rs` drives them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::share_acknowledge_request::{
    AcknowledgePartition, AcknowledgeTopic, AcknowledgementBatch as AckBatchOfAcknowledge,
};
use kafka_protocol::messages::share_fetch_request::{
    AcknowledgementBatch, FetchPartition, FetchTopic, ForgottenTopic,
};
use kafka_protocol::messages::share_fetch_response::PartitionData;
use kafka_protocol::messages::{
    ApiKey, GroupId, IncrementalAlterConfigsRequest, MetadataRequest, ShareAcknowledgeRequest,
    ShareFetchRequest, ShareGroupHeartbeatRequest, ShareGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::GroupError;
use super::coordinator::{Coordinator, GROUP_RESOURCE, GroupCoordinator, check};
use crate::kafka::{KafkaSettings, TopicPartition};

/// The member epoch that joins (or rejoins after a fencing).
const JOIN: i32 = 0;
/// The member epoch that leaves.
const LEAVE: i32 = -1;
/// The share session epoch that opens a session.
const OPEN: i32 = 0;
/// The share session epoch that closes one.
const CLOSE: i32 = -1;
/// Kafka's default `share.delivery.count.limit`, used when the group's
/// configuration cannot be read.
pub const DEFAULT_DELIVERY_LIMIT: i16 = 5;

/// How a member acknowledges one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ack {
    /// An offset with no record (a transaction marker, a compacted gap).
    Gap = 0,
    /// Processed: delivered to the output or dropped by a stage.
    Accept = 1,
    /// Not processed (a stage failed): to be delivered again.
    Release = 2,
    /// Unprocessable: its dead letter is written.
    Reject = 3,
}

/// Acknowledgements waiting to be sent, per partition, by offset.
#[derive(Debug, Default, Clone)]
pub struct Acks(BTreeMap<TopicPartition, BTreeMap<i64, Ack>>);

impl Acks {
    /// Acknowledges `offset` of `tp` with `ack`.
    pub fn add(&mut self, tp: &TopicPartition, offset: i64, ack: Ack) {
        self.0.entry(tp.clone()).or_default().insert(offset, ack);
    }

    /// Takes the acknowledgements of `tp` as batches: runs of consecutive
    /// offsets, with one type when the whole run has it, else one type per
    /// offset (as the protocol allows).
    pub fn take_batches(&mut self, tp: &TopicPartition) -> Vec<(i64, i64, Vec<i8>)> {
        let Some(offsets) = self.0.remove(tp) else {
            return Vec::new();
        };
        let mut batches: Vec<(i64, i64, Vec<i8>)> = Vec::new();
        for (offset, ack) in offsets {
            match batches.last_mut() {
                Some((_, last, types)) if *last + 1 == offset => {
                    *last = offset;
                    types.push(ack as i8);
                }
                _ => batches.push((offset, offset, vec![ack as i8])),
            }
        }
        for (_, _, types) in &mut batches {
            if types.iter().all(|t| *t == types[0]) {
                types.truncate(1);
            }
        }
        batches
    }

    /// The partitions with acknowledgements waiting.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.0
            .iter()
            .filter(|(_, o)| !o.is_empty())
            .map(|(tp, _)| tp.clone())
            .collect()
    }
}

/// One member of a share group: joins with a member id it chose, keeps its
/// epoch with heartbeats, and learns its assignment (topic ids and
/// partitions; several members may be given the same partition).
#[derive(Debug)]
pub struct ShareMember {
    member_id: String,
    epoch: i32,
    coordinator: GroupCoordinator,
    topics: Vec<String>,
    interval: Duration,
}

impl ShareMember {
    /// A member of share group `group` subscribing to `topics`; nothing is
    /// sent until the first [`ShareMember::heartbeat`].
    pub fn new(group: &str, kafka: &KafkaSettings, topics: Vec<String>) -> Self {
        Self {
            member_id: Uuid::new_v4().to_string(),
            epoch: JOIN,
            coordinator: GroupCoordinator::new(group, kafka),
            topics,
            interval: Duration::from_secs(5),
        }
    }

    /// The member id (a UUID this member chose).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The heartbeat interval the coordinator asks for.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One heartbeat (the first one joins). Returns the assignment when the
    /// coordinator sent one (topic id -> partitions), `None` when it is
    /// unchanged. A fenced or unknown member rejoins at the next
    /// heartbeat with the same id.
    pub async fn heartbeat(&mut self) -> Result<Option<BTreeMap<Uuid, Vec<i32>>>, GroupError> {
        // The subscription goes with the join; later heartbeats leave it
        // unchanged (null).
        let topics = (self.epoch == JOIN).then(|| {
            self.topics
                .iter()
                .map(|t| TopicName(StrBytes::from_string(t.clone())))
                .collect()
        });
        let resp = match self.beat(self.epoch, topics).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(
                    e.broker_error(),
                    Some(ResponseError::UnknownMemberId | ResponseError::FencedMemberEpoch)
                ) {
                    tracing::warn!(group = %self.coordinator.group(), member = %self.member_id, error = %e, "the share group dropped this member; rejoining");
                    self.epoch = JOIN;
                }
                self.coordinator.on_error(&e);
                return Err(e);
            }
        };
        self.epoch = resp.member_epoch;
        if resp.heartbeat_interval_ms > 0 {
            self.interval = Duration::from_millis(resp.heartbeat_interval_ms as u64);
        }
        Ok(resp.assignment.map(|a| {
            a.topic_partitions
                .into_iter()
                .map(|t| (t.topic_id, t.partitions))
                .collect()
        }))
    }

    /// One ShareGroupHeartbeat at `epoch` (0 joins with `topics`, -1
    /// leaves) to the coordinator; the broker's error as an `Err`.
    async fn beat(
        &mut self,
        epoch: i32,
        topics: Option<Vec<TopicName>>,
    ) -> Result<ShareGroupHeartbeatResponse, GroupError> {
        let req = ShareGroupHeartbeatRequest::default()
            .with_group_id(group_id(self.coordinator.group()))
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_member_epoch(epoch)
            .with_subscribed_topic_names(topics);
        let resp = self.coordinator.get().await?.call(req, 1).await?;
        check(ApiKey::ShareGroupHeartbeat, resp.error_code)?;
        Ok(resp)
    }

    /// The partitions of `assigned` (topic id -> partitions) by their
    /// leader's `host:port`, from Metadata v12 (which names topics by id)
    /// of any broker this member knows.
    pub async fn leaders(
        &self,
        assigned: &BTreeMap<Uuid, Vec<i32>>,
    ) -> Result<BTreeMap<String, Vec<(Uuid, TopicPartition)>>, GroupError> {
        // Every topic: the assignment names topics by id only.
        let req = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        let resp = self.coordinator.any_broker(req, 12).await?;
        let brokers: BTreeMap<i32, String> = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let mut out: BTreeMap<String, Vec<(Uuid, TopicPartition)>> = BTreeMap::new();
        for t in &resp.topics {
            let (Some(wanted), Some(name)) = (assigned.get(&t.topic_id), &t.name) else {
                continue;
            };
            for p in t
                .partitions
                .iter()
                .filter(|p| wanted.contains(&p.partition_index))
            {
                if let Some(addr) = brokers.get(&p.leader_id.0) {
                    out.entry(addr.clone()).or_default().push((
                        t.topic_id,
                        TopicPartition::new(name.0.as_str(), p.partition_index),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Leaves the group (epoch -1): the records this member holds are
    /// released at once instead of when their locks expire.
    pub async fn leave(&mut self) {
        if self.epoch == JOIN {
            return;
        }
        match self.beat(LEAVE, None).await {
            Ok(_) => {
                tracing::info!(group = %self.coordinator.group(), member = %self.member_id, "left the share group")
            }
            Err(e) => {
                tracing::warn!(group = %self.coordinator.group(), error = %e, "could not leave the share group; its records are released when their locks expire")
            }
        }
        self.epoch = JOIN;
    }

    /// Sets the group's `share.auto.offset.reset` (where the group starts
    /// on a partition it has never read: `earliest` or `latest`) with
    /// IncrementalAlterConfigs. Kafka's default is `latest`; the host
    /// applies `--start` as it does for consumer groups.
    pub async fn set_start(&self, start: &str) -> Result<(), GroupError> {
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(GROUP_RESOURCE)
                .with_resource_name(StrBytes::from_string(self.coordinator.group().to_owned()))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("share.auto.offset.reset"))
                        .with_config_operation(0)
                        .with_value(Some(StrBytes::from_string(start.into()))),
                ]),
        ]);
        let resp = self.coordinator.any_broker(req, 1).await?;
        for r in &resp.responses {
            check(ApiKey::IncrementalAlterConfigs, r.error_code)?;
        }
        Ok(())
    }

    /// The group's delivery limit (`share.delivery.count.limit`, read with
    /// DescribeConfigs on the group; the broker's
    /// `group.share.delivery.count.limit` is its default).
    pub async fn delivery_limit(&self) -> Result<Option<i16>, GroupError> {
        let limit = self
            .coordinator
            .group_config("share.delivery.count.limit")
            .await?;
        Ok(limit.and_then(|v| v.parse().ok()))
    }
}

/// What one partition of a share fetch returned.
#[derive(Debug)]
pub struct SharePartition {
    /// The partition.
    pub tp: TopicPartition,
    /// Its record data (record batches), when any.
    pub records: Option<bytes::Bytes>,
    /// The offset ranges acquired for this member, with their delivery
    /// counts: only these records are this member's to process.
    pub acquired: Vec<(i64, i64, i16)>,
    /// The partition's error, if any (0 when none).
    pub error: i16,
    /// The error of the acknowledgements this request carried, if any.
    pub ack_error: i16,
}

/// A share session with one broker (the leader of some assigned
/// partitions): its epoch and the partitions in it.
#[derive(Debug)]
pub struct ShareSession {
    conn: Coordinator,
    group: String,
    member_id: String,
    epoch: i32,
    /// The partitions the broker holds in the session.
    open: BTreeSet<(Uuid, i32)>,
}

impl ShareSession {
    /// A session of `member_id` in `group` with the broker at `addr`,
    /// opened by the first fetch.
    pub fn new(addr: String, kafka: &KafkaSettings, group: &str, member_id: &str) -> Self {
        Self {
            conn: Coordinator::new(
                addr,
                &kafka.transport,
                &kafka.client_id,
                kafka.request_timeout,
            ),
            group: group.into(),
            member_id: member_id.into(),
            epoch: OPEN,
            open: BTreeSet::new(),
        }
    }

    /// True when the session is open at the broker (acknowledgements may
    /// go with a fetch).
    pub fn is_open(&self) -> bool {
        self.epoch != OPEN
    }

    /// Starts over with a new session (after the broker lost this one).
    pub fn reset(&mut self) {
        self.epoch = OPEN;
        self.open.clear();
    }

    /// One ShareFetch of `partitions` (topic id, partition), carrying the
    /// acknowledgements in `acks` when the session is open (a request
    /// opening a session may carry none), waiting up to `wait` for
    /// records; partitions no longer wanted leave the session.
    pub async fn fetch(
        &mut self,
        partitions: &[(Uuid, TopicPartition)],
        acks: &mut Acks,
        wait: Duration,
        max_records: i32,
        max_bytes: i32,
    ) -> Result<Vec<SharePartition>, GroupError> {
        let wanted: BTreeSet<(Uuid, i32)> = partitions
            .iter()
            .map(|(id, tp)| (*id, tp.partition))
            .collect();
        let mut topics: BTreeMap<Uuid, Vec<FetchPartition>> = BTreeMap::new();
        let carry = self.is_open();
        for (id, tp) in partitions {
            let batches = if carry {
                acks.take_batches(tp)
            } else {
                Vec::new()
            };
            topics.entry(*id).or_default().push(
                FetchPartition::default()
                    .with_partition_index(tp.partition)
                    .with_acknowledgement_batches(
                        batches
                            .into_iter()
                            .map(|(first, last, types)| {
                                AcknowledgementBatch::default()
                                    .with_first_offset(first)
                                    .with_last_offset(last)
                                    .with_acknowledge_types(types)
                            })
                            .collect(),
                    ),
            );
        }
        let mut forgotten: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
        for (id, p) in self.open.difference(&wanted) {
            forgotten.entry(*id).or_default().push(*p);
        }
        let req = ShareFetchRequest::default()
            .with_group_id(Some(group_id(&self.group)))
            .with_member_id(Some(StrBytes::from_string(self.member_id.clone())))
            .with_share_session_epoch(self.epoch)
            .with_max_wait_ms(wait.as_millis() as i32)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_max_records(max_records)
            .with_batch_size(max_records)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(id, parts)| {
                        FetchTopic::default()
                            .with_topic_id(id)
                            .with_partitions(parts)
                    })
                    .collect(),
            )
            .with_forgotten_topics_data(
                forgotten
                    .into_iter()
                    .map(|(id, parts)| {
                        ForgottenTopic::default()
                            .with_topic_id(id)
                            .with_partitions(parts)
                    })
                    .collect(),
            );
        let resp = self.conn.call_with(req, 1, wait).await?;
        if let Err(e) = check(ApiKey::ShareFetch, resp.error_code) {
            if matches!(
                e.broker_error(),
                Some(
                    ResponseError::ShareSessionNotFound
                        | ResponseError::InvalidShareSessionEpoch
                        | ResponseError::ShareSessionLimitReached
                )
            ) {
                self.reset();
            }
            return Err(e);
        }
        self.epoch = next_epoch(self.epoch);
        self.open = wanted;
        let mut out = Vec::new();
        for t in resp.responses {
            // The topic's name, from the request (responses name it by id).
            let Some((_, tp)) = partitions.iter().find(|(id, _)| *id == t.topic_id) else {
                continue;
            };
            let topic = tp.topic.clone();
            for p in t.partitions {
                out.push(partition_of(topic.clone(), p));
            }
        }
        Ok(out)
    }

    /// Sends the acknowledgements waiting in `acks` and closes the session
    /// (ShareAcknowledge at epoch -1), so the broker releases nothing this
    /// member processed. Nothing to send when the session never opened.
    pub async fn close(
        &mut self,
        ids: &BTreeMap<TopicPartition, Uuid>,
        acks: &mut Acks,
    ) -> Result<(), GroupError> {
        if !self.is_open() {
            return Ok(());
        }
        let mut topics: BTreeMap<Uuid, Vec<AcknowledgePartition>> = BTreeMap::new();
        for tp in acks.partitions() {
            let Some(id) = ids.get(&tp) else { continue };
            let batches = acks
                .take_batches(&tp)
                .into_iter()
                .map(|(first, last, types)| {
                    AckBatchOfAcknowledge::default()
                        .with_first_offset(first)
                        .with_last_offset(last)
                        .with_acknowledge_types(types)
                })
                .collect();
            topics.entry(*id).or_default().push(
                AcknowledgePartition::default()
                    .with_partition_index(tp.partition)
                    .with_acknowledgement_batches(batches),
            );
        }
        let req = ShareAcknowledgeRequest::default()
            .with_group_id(Some(group_id(&self.group)))
            .with_member_id(Some(StrBytes::from_string(self.member_id.clone())))
            .with_share_session_epoch(CLOSE)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(id, parts)| {
                        AcknowledgeTopic::default()
                            .with_topic_id(id)
                            .with_partitions(parts)
                    })
                    .collect(),
            );
        let resp = self.conn.call(req, 1).await;
        self.reset();
        let resp = resp?;
        check(ApiKey::ShareAcknowledge, resp.error_code)?;
        for t in &resp.responses {
            for p in &t.partitions {
                check(ApiKey::ShareAcknowledge, p.error_code)?;
            }
        }
        Ok(())
    }
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

/// The session epoch after `epoch`: it counts up and wraps to 1 (0 opens
/// a session, -1 closes one).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX { 1 } else { epoch + 1 }
}

fn partition_of(topic: std::sync::Arc<str>, p: PartitionData) -> SharePartition {
    SharePartition {
        tp: TopicPartition::new(topic, p.partition_index),
        records: p.records,
        acquired: p
            .acquired_records
            .iter()
            .map(|a| (a.first_offset, a.last_offset, a.delivery_count))
            .collect(),
        error: p.error_code,
        ack_error: p.acknowledge_error_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_become_runs_with_one_type_or_one_per_offset() {
        let tp = TopicPartition::new("in", 0);
        let mut acks = Acks::default();
        for o in [3, 4, 5] {
            acks.add(&tp, o, Ack::Accept);
        }
        acks.add(&tp, 7, Ack::Accept);
        acks.add(&tp, 8, Ack::Reject);
        acks.add(&tp, 9, Ack::Release);
        assert_eq!(acks.partitions(), std::slice::from_ref(&tp));
        assert_eq!(
            acks.take_batches(&tp),
            [(3, 5, vec![1]), (7, 9, vec![1, 3, 2])]
        );
        assert!(acks.partitions().is_empty());
        assert!(acks.take_batches(&tp).is_empty());
    }

    #[test]
    fn session_epochs_count_up_and_skip_open_and_close() {
        assert_eq!(next_epoch(OPEN), 1);
        assert_eq!(next_epoch(41), 42);
        assert_eq!(next_epoch(i32::MAX), 1);
    }
}
