//! KIP-848's consumer group protocol (Kafka 4.0+): one call,
//! `ConsumerGroupHeartbeat`, joins, heartbeats, acknowledges revocations
//! and leaves; the broker computes the assignment and hands it out
//! incrementally: a partition reaches its new owner once the old owner said
//! (in a heartbeat listing what it owns) that it let it go. Offsets are
//! committed with the member epoch in place of the classic generation.
//!
//! This module holds the protocol's pieces: the choice of protocol from
//! the coordinator's ApiVersions, the topic ids the assignment is given
//! in, the heartbeat request and the decoding of its assignment.
//! `member.rs` and `heartbeat.rs` drive them as they drive the classic
//! calls. Written by hand over `kafka-protocol`'s messages, as the classic
//! calls are: `rskafka` has no group APIs.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::consumer_group_heartbeat_response::Assignment;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    GroupId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::GroupError;
use super::coordinator::Coordinator;
use crate::kafka::TopicPartition;
use crate::kafka::topic_partition::by_topic;

/// The member epoch that joins (or rejoins after a fencing).
pub(crate) const JOIN: i32 = 0;
/// The member epoch that leaves the group.
pub(crate) const LEAVE: i32 = -1;
/// The member epoch of a static member leaving for a restart: its
/// partitions wait for it (the session timeout) instead of moving.
pub(crate) const LEAVE_STATIC: i32 = -2;

/// The group protocols a coordinator speaks, from one ApiVersions call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offered {
    /// KIP-848's consumer protocol: `ConsumerGroupHeartbeat` listed and
    /// the cluster's `group.version` feature at least 1 (Kafka 4.0+ by
    /// default; a 3.x broker may list the API without the feature).
    pub consumer: bool,
    /// KIP-932's share groups: `ShareGroupDescribe` listed and
    /// `share.version` at least 1 (on by default from Kafka 4.2).
    pub share: bool,
}

/// What the coordinator behind `c` offers (ApiVersions v3).
pub(crate) async fn offered(c: &mut Coordinator) -> Result<Offered, GroupError> {
    let req = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("pipeline-host"))
        .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
    let resp = c.call(req, 3).await?;
    let has = |api: ApiKey, feature: &str| {
        resp.api_keys.iter().any(|k| k.api_key == api as i16)
            && resp
                .finalized_features
                .iter()
                .any(|f| f.name.as_str() == feature && f.max_version_level >= 1)
    };
    Ok(Offered {
        consumer: has(ApiKey::ConsumerGroupHeartbeat, "group.version"),
        share: has(ApiKey::ShareGroupDescribe, "share.version"),
    })
}

/// Topic names and the ids the consumer protocol names them by.
#[derive(Debug, Default, Clone)]
pub(crate) struct TopicIds {
    ids: BTreeMap<String, Uuid>,
    names: BTreeMap<Uuid, String>,
}

impl TopicIds {
    /// The ids of `topics` (Metadata v12); a topic the brokers do not know
    /// is left out.
    pub(crate) async fn of(c: &mut Coordinator, topics: &[String]) -> Result<Self, GroupError> {
        let req = crate::kafka::metadata_of(topics.iter().map(String::as_str));
        let resp = c.call(req, 12).await?;
        let mut ids = Self::default();
        for t in resp.topics.iter().filter(|t| t.error_code == 0) {
            if let Some(name) = &t.name {
                ids.ids.insert(name.0.as_str().to_owned(), t.topic_id);
                ids.names.insert(t.topic_id, name.0.as_str().to_owned());
            }
        }
        Ok(ids)
    }

    /// `partitions` as the request lists them (topics without a known id
    /// left out).
    fn owned(&self, partitions: &[TopicPartition]) -> Vec<TopicPartitions> {
        let with_offsets: Vec<(TopicPartition, i64)> =
            partitions.iter().map(|p| (p.clone(), 0)).collect();
        by_topic(&with_offsets)
            .into_iter()
            .filter_map(|(topic, ps)| {
                Some(
                    TopicPartitions::default()
                        .with_topic_id(*self.ids.get(&*topic)?)
                        .with_partitions(ps.into_iter().map(|(p, _)| p).collect()),
                )
            })
            .collect()
    }

    /// The partitions of an assignment, sorted; `Err` with the first topic
    /// id this map does not know (a topic created since it was read).
    pub(crate) fn assigned(&self, a: &Assignment) -> Result<Vec<TopicPartition>, Uuid> {
        let mut out = Vec::new();
        for t in &a.topic_partitions {
            let name = self.names.get(&t.topic_id).ok_or(t.topic_id)?;
            out.extend(
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(name.as_str(), *p)),
            );
        }
        out.sort();
        Ok(out)
    }
}

/// What a full heartbeat (a join, or the first after an error) says besides
/// the member's identity and owned partitions.
#[derive(Debug, Clone)]
pub(crate) struct Subscription<'a> {
    /// Static member id.
    pub instance_id: Option<&'a str>,
    /// How long the broker waits for this member to revoke.
    pub rebalance_timeout: Duration,
    /// The subscribed topics.
    pub topics: Vec<String>,
    /// The broker's assignor to use, if not its default.
    pub server_assignor: Option<&'a str>,
}

/// One heartbeat of `member_id` at `epoch`: a full one with `full`
/// (joining, or after an error), else only what may have changed; `owned`
/// lists what the member owns now (the broker moves a revoked partition on
/// once it is no longer listed).
pub(crate) fn heartbeat(
    group: &str,
    member_id: &str,
    epoch: i32,
    full: Option<&Subscription<'_>>,
    owned: Option<(&TopicIds, &[TopicPartition])>,
) -> ConsumerGroupHeartbeatRequest {
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_member_id(StrBytes::from_string(member_id.into()))
        .with_member_epoch(epoch)
        .with_rebalance_timeout_ms(-1)
        .with_topic_partitions(owned.map(|(ids, ps)| ids.owned(ps)));
    match full {
        None => req,
        Some(f) => req
            .with_instance_id(f.instance_id.map(|i| StrBytes::from_string(i.into())))
            .with_rebalance_timeout_ms(f.rebalance_timeout.as_millis() as i32)
            .with_subscribed_topic_names(Some(
                f.topics
                    .iter()
                    .map(|t| TopicName(StrBytes::from_string(t.clone())))
                    .collect(),
            ))
            .with_server_assignor(f.server_assignor.map(|a| StrBytes::from_string(a.into()))),
    }
}

/// A leave: epoch -1, or -2 for a static member (its partitions wait for
/// it to come back within the session timeout).
pub(crate) fn leave(
    group: &str,
    member_id: &str,
    instance_id: Option<&str>,
) -> ConsumerGroupHeartbeatRequest {
    let epoch = if instance_id.is_some() {
        LEAVE_STATIC
    } else {
        LEAVE
    };
    heartbeat(group, member_id, epoch, None, None)
        .with_instance_id(instance_id.map(|i| StrBytes::from_string(i.into())))
}

/// Sends one heartbeat (version 0: topic names, no regex).
pub(crate) async fn send(
    c: &mut Coordinator,
    req: ConsumerGroupHeartbeatRequest,
) -> Result<ConsumerGroupHeartbeatResponse, GroupError> {
    c.call(req, 0).await
}

/// A new member id: the client picks it (KIP-1082), a random UUID, and
/// keeps it for the life of the process.
pub(crate) fn new_member_id() -> String {
    Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_group_heartbeat_response::TopicPartitions as Assigned;

    fn ids() -> TopicIds {
        let mut ids = TopicIds::default();
        for (n, t) in ["in-a", "in-b"].into_iter().enumerate() {
            let id = Uuid::from_u128(n as u128 + 1);
            ids.ids.insert(t.into(), id);
            ids.names.insert(id, t.into());
        }
        ids
    }

    #[test]
    fn owned_partitions_are_listed_by_topic_id() {
        let ids = ids();
        let owned = [
            TopicPartition::new("in-b", 2),
            TopicPartition::new("in-a", 0),
            TopicPartition::new("in-a", 1),
            TopicPartition::new("gone", 0),
        ];
        let listed = ids.owned(&owned);
        let got: Vec<(u128, Vec<i32>)> = listed
            .iter()
            .map(|t| (t.topic_id.as_u128(), t.partitions.clone()))
            .collect();
        assert_eq!(got, vec![(1, vec![0, 1]), (2, vec![2])]);
    }

    #[test]
    fn an_assignment_names_its_topics_or_the_unknown_id() {
        let ids = ids();
        let a = Assignment::default().with_topic_partitions(vec![
            Assigned::default()
                .with_topic_id(Uuid::from_u128(2))
                .with_partitions(vec![1, 0]),
            Assigned::default()
                .with_topic_id(Uuid::from_u128(1))
                .with_partitions(vec![2]),
        ]);
        assert_eq!(
            ids.assigned(&a).unwrap(),
            vec![
                TopicPartition::new("in-a", 2),
                TopicPartition::new("in-b", 0),
                TopicPartition::new("in-b", 1),
            ]
        );
        let unknown = Assignment::default().with_topic_partitions(vec![
            Assigned::default()
                .with_topic_id(Uuid::from_u128(9))
                .with_partitions(vec![0]),
        ]);
        assert_eq!(ids.assigned(&unknown), Err(Uuid::from_u128(9)));
    }

    #[test]
    fn a_full_heartbeat_subscribes_and_a_light_one_does_not() {
        let ids = ids();
        let sub = Subscription {
            instance_id: Some("eo-0"),
            rebalance_timeout: Duration::from_secs(30),
            topics: vec!["in-a".into()],
            server_assignor: Some("range"),
        };
        let owned = [TopicPartition::new("in-a", 0)];
        let full = heartbeat("g", "m", JOIN, Some(&sub), Some((&ids, &owned)));
        assert_eq!(full.rebalance_timeout_ms, 30_000);
        assert_eq!(full.subscribed_topic_names.as_ref().map(Vec::len), Some(1));
        assert_eq!(full.server_assignor.as_deref(), Some("range"));
        assert_eq!(full.topic_partitions.as_ref().map(Vec::len), Some(1));
        let light = heartbeat("g", "m", 5, None, None);
        assert_eq!(light.rebalance_timeout_ms, -1);
        assert!(light.subscribed_topic_names.is_none() && light.topic_partitions.is_none());
        assert_eq!(leave("g", "m", Some("eo-0")).member_epoch, LEAVE_STATIC);
        assert_eq!(leave("g", "m", None).member_epoch, LEAVE);
    }
}
