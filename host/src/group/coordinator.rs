//! The coordinator connection: Kafka group and offset APIs (which `rskafka`
//! does not have), spoken with the `kafka-protocol` crate over a connection
//! of our own.
//!
//! Framing is [`crate::kafka::wire`]'s. One request is in flight at a time (group calls are rare), every
//! call has a timeout, and any I/O error or timeout drops the connection so
//! the next call reconnects. [`Coordinator::find`] asks the brokers it
//! knows, in turn, which one coordinates the group (FindCoordinator),
//! connects there, and learns the cluster's brokers from the answering
//! broker's metadata, so that the next look-up still works when the
//! bootstrap brokers are gone.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    DescribeConfigsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};

use crate::kafka::TopicPartition;
use crate::kafka::topic_partition::by_topic;
use crate::kafka::transport::{BrokerStream, Transport};
use crate::kafka::wire::roundtrip;

use super::GroupError;

/// The config resource type of a group (KIP-848's group configs).
pub(crate) const GROUP_RESOURCE: i8 = 32;

/// After these errors the coordinator must be looked up again.
pub(crate) fn coordinator_moved(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::CoordinatorLoadInProgress
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::NotCoordinator
    )
}

/// `Err` with the broker's error when `code` is not 0.
pub(crate) fn check(call: ApiKey, code: i16) -> Result<(), GroupError> {
    match code.err() {
        None => Ok(()),
        Some(error) => Err(GroupError::Broker { call, error }),
    }
}

/// The one group a describe call asked for, from its response's list.
fn the_group<T>(groups: Vec<T>, call: ApiKey) -> Result<T, GroupError> {
    groups.into_iter().next().ok_or(GroupError::Malformed {
        call,
        what: "no group",
    })
}

/// The API of a request type.
fn api<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("kafka-protocol request types have known keys")
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// A transactional producer as the brokers know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnProducer {
    /// The transactional id.
    pub transactional_id: StrBytes,
    /// The producer id `InitProducerId` gave.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
}

/// What a coordinator is looked up for.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// A consumer group's coordinator.
    Group(&'a str),
    /// A transactional id's transaction coordinator.
    Transaction(&'a str),
}

/// A connection to one broker for group and offset calls.
#[derive(Debug)]
pub struct Coordinator {
    addr: String,
    transport: Transport,
    stream: Option<Box<dyn BrokerStream>>,
    client_id: String,
    correlation: i32,
    timeout: Duration,
}

impl Coordinator {
    /// A connection to `addr` (`host:port`), opened on first use.
    pub fn new(addr: String, transport: &Transport, client_id: &str, timeout: Duration) -> Self {
        Self {
            addr,
            transport: transport.clone(),
            stream: None,
            client_id: client_id.into(),
            correlation: 0,
            timeout,
        }
    }

    /// Asks `brokers` (`host:port`), in turn, for the coordinator of
    /// `group` and returns a connection to it, with the addresses of every
    /// broker in the cluster as the answering broker's metadata lists them
    /// (empty if that request failed).
    pub async fn find(
        transport: &Transport,
        brokers: &[String],
        group: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<(Self, Vec<String>), GroupError> {
        Self::find_key(transport, brokers, Key::Group(group), client_id, timeout).await
    }

    /// [`Coordinator::find`] for a group or a transactional id.
    pub async fn find_key(
        transport: &Transport,
        brokers: &[String],
        key: Key<'_>,
        client_id: &str,
        timeout: Duration,
    ) -> Result<(Self, Vec<String>), GroupError> {
        let (group, key_type) = match key {
            Key::Group(g) => (g, 0),
            Key::Transaction(t) => (t, 1),
        };
        let mut last = None;
        for broker in brokers {
            let mut conn = Self::new(broker.clone(), transport, client_id, timeout);
            let req = FindCoordinatorRequest::default()
                .with_key(s(group))
                .with_key_type(key_type);
            match conn.call(req, 3).await {
                Ok(resp) if resp.error_code.is_ok() => {
                    let addr = format!("{}:{}", resp.host.as_str(), resp.port);
                    tracing::debug!(group, coordinator = %addr, via = %broker, "found the group coordinator");
                    let cluster = conn.brokers().await.unwrap_or_else(|e| {
                        tracing::debug!(broker = %broker, error = %e, "could not list the cluster's brokers");
                        Vec::new()
                    });
                    return Ok((Self::new(addr, transport, client_id, timeout), cluster));
                }
                Ok(resp) => last = check(ApiKey::FindCoordinator, resp.error_code).err(),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(GroupError::NoBootstrap))
    }

    /// The `host:port` of every broker in the cluster (Metadata v4 for no
    /// topic).
    pub async fn brokers(&mut self) -> Result<Vec<String>, GroupError> {
        let req = MetadataRequest::default()
            .with_topics(Some(Vec::new()))
            .with_allow_auto_topic_creation(false);
        let resp = self.call(req, 4).await?;
        Ok(resp
            .brokers
            .iter()
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .collect())
    }

    /// The partition counts of `topics` (Metadata v4); a topic the broker
    /// does not know (or denies) is left out.
    pub async fn partition_counts(
        &mut self,
        topics: &[String],
    ) -> Result<BTreeMap<String, i32>, GroupError> {
        let req = crate::kafka::metadata_of(topics.iter().map(String::as_str));
        let resp = self.call(req, 4).await?;
        Ok(resp
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .filter_map(|t| {
                Some((
                    t.name.as_ref()?.0.as_str().to_owned(),
                    t.partitions.len() as i32,
                ))
            })
            .collect())
    }

    /// The broker this connection talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` at `version` and returns its response; `extra` is added
    /// to the call's timeout (for calls the broker may hold, like JoinGroup).
    pub async fn call_with<R: Request>(
        &mut self,
        req: R,
        version: i16,
        extra: Duration,
    ) -> Result<R::Response, GroupError> {
        let call = api::<R>();
        let limit = self.timeout + extra;
        match tokio::time::timeout(limit, self.exchange(req, version)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(GroupError::Timeout {
                    call,
                    broker: self.addr.clone(),
                    after: limit,
                })
            }
        }
    }

    /// [`Coordinator::call_with`] with the plain timeout.
    pub async fn call<R: Request>(
        &mut self,
        req: R,
        version: i16,
    ) -> Result<R::Response, GroupError> {
        self.call_with(req, version, Duration::ZERO).await
    }

    async fn exchange<R: Request>(
        &mut self,
        req: R,
        version: i16,
    ) -> Result<R::Response, GroupError> {
        let call = api::<R>();
        if self.stream.is_none() {
            let stream = self
                .transport
                .connect(&self.addr, &self.client_id)
                .await
                .map_err(|source| GroupError::Connect {
                    call,
                    broker: self.addr.clone(),
                    source,
                })?;
            self.stream = Some(stream);
        }
        self.correlation = self.correlation.wrapping_add(1);
        let stream = self.stream.as_mut().expect("connected above");
        roundtrip(stream, self.correlation, &self.client_id, req, version)
            .await
            .map_err(|source| GroupError::Wire {
                call,
                broker: self.addr.clone(),
                source,
            })
    }

    /// JoinGroup v5. The broker may hold it for up to `rebalance_timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn join_group(
        &mut self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        session_timeout: Duration,
        rebalance_timeout: Duration,
        protocols: Vec<(String, bytes::Bytes)>,
    ) -> Result<JoinGroupResponse, GroupError> {
        use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(session_timeout.as_millis() as i32)
            .with_rebalance_timeout_ms(rebalance_timeout.as_millis() as i32)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s))
            .with_protocol_type(s("consumer"))
            .with_protocols(
                protocols
                    .into_iter()
                    .map(|(name, metadata)| {
                        JoinGroupRequestProtocol::default()
                            .with_name(s(&name))
                            .with_metadata(metadata)
                    })
                    .collect(),
            );
        self.call_with(req, 5, rebalance_timeout).await
    }

    /// SyncGroup v3: the leader sends `assignments`, followers send none.
    pub async fn sync_group(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, bytes::Bytes)>,
        rebalance_timeout: Duration,
    ) -> Result<SyncGroupResponse, GroupError> {
        use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(&m))
                            .with_assignment(a)
                    })
                    .collect(),
            );
        self.call_with(req, 3, rebalance_timeout).await
    }

    /// Heartbeat v3; returns the broker's error, if any.
    pub async fn heartbeat(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<Option<ResponseError>, GroupError> {
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s));
        Ok(self.call(req, 3).await?.error_code.err())
    }

    /// LeaveGroup v3 for one member.
    pub async fn leave_group(
        &mut self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<Option<ResponseError>, GroupError> {
        let req = LeaveGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_members(vec![
                MemberIdentity::default()
                    .with_member_id(s(member_id))
                    .with_group_instance_id(instance_id.map(s)),
            ]);
        Ok(self.call(req, 3).await?.error_code.err())
    }

    /// OffsetCommit of `offsets` (partition -> next offset to read) at
    /// `version`: 7 for classic members, 9 for consumer-protocol members
    /// (the broker refuses them older versions), whose `generation` is
    /// their member epoch. `generation` -1 with an empty member id is a
    /// standalone commit. Returns the first partition error, if any.
    pub async fn commit(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: &[(TopicPartition, i64)],
        version: i16,
    ) -> Result<(), GroupError> {
        let topics = by_topic(offsets)
            .into_iter()
            .map(|(topic, offsets)| {
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_partitions(
                        offsets
                            .into_iter()
                            .map(|(p, o)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                                    .with_committed_leader_epoch(-1)
                            })
                            .collect(),
                    )
            })
            .collect();
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s))
            .with_topics(topics);
        let resp = self.call(req, version).await?;
        for t in resp.topics {
            for p in t.partitions {
                check(ApiKey::OffsetCommit, p.error_code)?;
            }
        }
        Ok(())
    }

    /// TxnOffsetCommit v3 (KIP-447) of `offsets` inside the
    /// transaction of `producer`: the broker checks the generation and
    /// member id, so a member the group has moved on from (a zombie) is
    /// refused (`ILLEGAL_GENERATION`, `UNKNOWN_MEMBER_ID`,
    /// `FENCED_INSTANCE_ID`).
    #[allow(clippy::too_many_arguments)]
    pub async fn txn_commit(
        &mut self,
        group: &str,
        producer: &TxnProducer,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), GroupError> {
        use kafka_protocol::messages::TxnOffsetCommitRequest;
        use kafka_protocol::messages::txn_offset_commit_request::{
            TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
        };
        let topics = by_topic(offsets)
            .into_iter()
            .map(|(topic, offsets)| {
                TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_partitions(
                        offsets
                            .into_iter()
                            .map(|(p, o)| {
                                TxnOffsetCommitRequestPartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                                    .with_committed_leader_epoch(-1)
                            })
                            .collect(),
                    )
            })
            .collect();
        let req = TxnOffsetCommitRequest::default()
            .with_transactional_id(producer.transactional_id.clone().into())
            .with_group_id(GroupId(s(group)))
            .with_producer_id(producer.producer_id.into())
            .with_producer_epoch(producer.producer_epoch)
            .with_generation_id(generation)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s))
            .with_topics(topics);
        let resp = self.call(req, 3).await?;
        for t in resp.topics {
            for p in t.partitions {
                check(ApiKey::TxnOffsetCommit, p.error_code)?;
            }
        }
        Ok(())
    }

    /// OffsetFetch v7: committed offsets of `partitions` (none: every
    /// partition the group has an offset for)
    /// (`None` where the group has none). Offsets of a transaction still
    /// open are not read (`require_stable`): the broker answers
    /// `UNSTABLE_OFFSET_COMMIT` until it ends, as for Kafka's
    /// `read_committed` consumers.
    pub async fn fetch_offsets(
        &mut self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, Option<i64>)>, GroupError> {
        let asked: Vec<(TopicPartition, ())> =
            partitions.iter().map(|tp| (tp.clone(), ())).collect();
        let topics = by_topic(&asked)
            .into_iter()
            .map(|(topic, ps)| {
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_partition_indexes(ps.into_iter().map(|(p, ())| p).collect())
            })
            .collect();
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics((!partitions.is_empty()).then_some(topics))
            .with_require_stable(true);
        let resp = self.call(req, 7).await?;
        check(ApiKey::OffsetFetch, resp.error_code)?;
        let mut out = Vec::new();
        for t in resp.topics {
            let topic: std::sync::Arc<str> = t.name.0.as_str().into();
            for p in t.partitions {
                check(ApiKey::OffsetFetch, p.error_code)?;
                out.push((
                    TopicPartition::new(topic.clone(), p.partition_index),
                    (p.committed_offset >= 0).then_some(p.committed_offset),
                ));
            }
        }
        Ok(out)
    }
}

/// A group as DescribeGroups, ConsumerGroupDescribe or ShareGroupDescribe
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupDescription {
    /// State: Empty, Stable, PreparingRebalance, CompletingRebalance, Dead.
    pub state: String,
    /// Assignment protocol in use (e.g. `range`).
    pub protocol: String,
    /// Members: (member id, instance id, client id, host, assignment blob).
    pub members: Vec<GroupMember>,
    /// A share group (KIP-932): offsets are share-partition start
    /// offsets, and several members may be assigned one partition.
    pub share: bool,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupMember {
    /// Member id.
    pub member_id: String,
    /// Static instance id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub host: String,
    /// Assignment blob (consumer protocol).
    pub assignment: bytes::Bytes,
    /// The member epoch (consumer-protocol groups).
    pub epoch: Option<i32>,
}

impl GroupMember {
    /// A member of a group the broker assigns (consumer protocol, share
    /// group): `owned` (topic -> partitions) re-encoded as the classic
    /// protocol's assignment blob, with its epoch.
    fn assigned(
        member_id: &str,
        instance_id: Option<&str>,
        (client_id, host): (&str, &str),
        owned: &BTreeMap<String, Vec<i32>>,
        epoch: i32,
    ) -> Self {
        Self {
            member_id: member_id.to_owned(),
            instance_id: instance_id.map(str::to_owned),
            client_id: client_id.to_owned(),
            host: host.to_owned(),
            assignment: super::assignor::encode_assignment(owned),
            epoch: Some(epoch),
        }
    }
}

impl Coordinator {
    /// One group as its coordinator describes it: ConsumerGroupDescribe
    /// where the broker offers it (a KIP-848 group: members with their
    /// epochs and the broker's assignor), then ShareGroupDescribe (a share
    /// group), else, or for a classic group, DescribeGroups.
    pub(crate) async fn describe(&mut self, group: &str) -> Result<GroupDescription, GroupError> {
        let offered = super::consumer::offered(self).await?;
        let not_this_kind = |r: &Result<GroupDescription, GroupError>| {
            matches!(
                r,
                Err(GroupError::Broker {
                    error: ResponseError::GroupIdNotFound,
                    ..
                })
            )
        };
        if offered.consumer {
            let r = self.describe_consumer(group).await;
            if !not_this_kind(&r) {
                return r;
            }
        }
        if offered.share {
            let r = self.describe_share(group).await;
            if !not_this_kind(&r) {
                return r;
            }
        }
        self.describe_classic(group).await
    }

    /// ShareGroupDescribe v1 for one share group (KIP-932);
    /// `GROUP_ID_NOT_FOUND` for another kind. Assignments are re-encoded as
    /// the classic protocol's blobs, so every kind prints alike.
    async fn describe_share(&mut self, group: &str) -> Result<GroupDescription, GroupError> {
        let req = kafka_protocol::messages::ShareGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(s(group))]);
        let resp = self.call(req, 1).await?;
        let g = the_group(resp.groups, ApiKey::ShareGroupDescribe)?;
        check(ApiKey::ShareGroupDescribe, g.error_code)?;
        Ok(GroupDescription {
            state: g.group_state.as_str().to_owned(),
            protocol: format!(
                "share (KIP-932, assignor {}, group epoch {})",
                g.assignor_name.as_str(),
                g.group_epoch
            ),
            members: g
                .members
                .into_iter()
                .map(|m| {
                    let owned = m
                        .assignment
                        .topic_partitions
                        .iter()
                        .map(|t| (t.topic_name.0.as_str().to_owned(), t.partitions.clone()))
                        .collect();
                    GroupMember::assigned(
                        m.member_id.as_str(),
                        None,
                        (m.client_id.as_str(), m.client_host.as_str()),
                        &owned,
                        m.member_epoch,
                    )
                })
                .collect(),
            share: true,
        })
    }

    /// The share-partition start offsets of share group `group` on
    /// `partitions` (none: every partition it has state for), with
    /// DescribeShareGroupOffsets v0: everything below a start offset is
    /// acknowledged; `None` where the group has not started.
    pub(crate) async fn share_offsets(
        &mut self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, Option<i64>)>, GroupError> {
        use kafka_protocol::messages::describe_share_group_offsets_request::{
            DescribeShareGroupOffsetsRequestGroup, DescribeShareGroupOffsetsRequestTopic,
        };
        let asked: Vec<(TopicPartition, ())> =
            partitions.iter().map(|tp| (tp.clone(), ())).collect();
        let topics = (!partitions.is_empty()).then(|| {
            by_topic(&asked)
                .into_iter()
                .map(|(t, ps)| {
                    DescribeShareGroupOffsetsRequestTopic::default()
                        .with_topic_name(TopicName(s(&t)))
                        .with_partitions(ps.into_iter().map(|(p, ())| p).collect())
                })
                .collect()
        });
        let req = kafka_protocol::messages::DescribeShareGroupOffsetsRequest::default()
            .with_groups(vec![
                DescribeShareGroupOffsetsRequestGroup::default()
                    .with_group_id(GroupId(s(group)))
                    .with_topics(topics),
            ]);
        let resp = self.call(req, 0).await?;
        let mut out = Vec::new();
        for g in resp.groups {
            check(ApiKey::DescribeShareGroupOffsets, g.error_code)?;
            for t in g.topics {
                let topic = t.topic_name.0.as_str();
                for p in t.partitions {
                    check(ApiKey::DescribeShareGroupOffsets, p.error_code)?;
                    out.push((
                        TopicPartition::new(topic, p.partition_index),
                        (p.start_offset >= 0).then_some(p.start_offset),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// ConsumerGroupDescribe v0 for one consumer-protocol group;
    /// `GROUP_ID_NOT_FOUND` for a classic one. Assignments are re-encoded
    /// as the classic protocol's blobs, so both kinds print alike.
    async fn describe_consumer(&mut self, group: &str) -> Result<GroupDescription, GroupError> {
        let req = kafka_protocol::messages::ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(s(group))]);
        let resp = self.call(req, 0).await?;
        let g = the_group(resp.groups, ApiKey::ConsumerGroupDescribe)?;
        check(ApiKey::ConsumerGroupDescribe, g.error_code)?;
        Ok(GroupDescription {
            state: g.group_state.as_str().to_owned(),
            protocol: format!(
                "consumer (KIP-848, assignor {}, group epoch {})",
                g.assignor_name.as_str(),
                g.group_epoch
            ),
            members: g
                .members
                .into_iter()
                .map(|m| {
                    let owned = m
                        .assignment
                        .topic_partitions
                        .iter()
                        .map(|t| (t.topic_name.0.as_str().to_owned(), t.partitions.clone()))
                        .collect();
                    GroupMember::assigned(
                        m.member_id.as_str(),
                        m.instance_id.as_ref().map(|i| i.as_str()),
                        (m.client_id.as_str(), m.client_host.as_str()),
                        &owned,
                        m.member_epoch,
                    )
                })
                .collect(),
            share: false,
        })
    }

    /// DescribeGroups v5 for one group.
    async fn describe_classic(&mut self, group: &str) -> Result<GroupDescription, GroupError> {
        let req = kafka_protocol::messages::DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(s(group))]);
        let resp = self.call(req, 5).await?;
        let g = the_group(resp.groups, ApiKey::DescribeGroups)?;
        check(ApiKey::DescribeGroups, g.error_code)?;
        Ok(GroupDescription {
            state: g.group_state.as_str().to_owned(),
            protocol: g.protocol_data.as_str().to_owned(),
            members: g
                .members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.as_str().to_owned(),
                    instance_id: m.group_instance_id.map(|i| i.as_str().to_owned()),
                    client_id: m.client_id.as_str().to_owned(),
                    host: m.client_host.as_str().to_owned(),
                    assignment: m.member_assignment,
                    epoch: None,
                })
                .collect(),
            share: false,
        })
    }
}

/// One group's coordinator connection, looked up through [`Brokers`] when
/// missing and forgotten after an error that says it moved (or a network
/// error), so the next call looks it up again. Consumer group members and
/// share group members both call through it.
#[derive(Debug)]
pub(crate) struct GroupCoordinator {
    group: String,
    brokers: Brokers,
    transport: Transport,
    client_id: String,
    timeout: Duration,
    conn: Option<Coordinator>,
}

impl GroupCoordinator {
    /// The coordinator of `group`, found through `kafka`'s bootstrap
    /// brokers at the first call.
    pub(crate) fn new(group: &str, kafka: &crate::kafka::KafkaSettings) -> Self {
        Self {
            group: group.into(),
            brokers: Brokers::new(&kafka.bootstrap),
            transport: kafka.transport.clone(),
            client_id: kafka.client_id.clone(),
            timeout: kafka.request_timeout,
            conn: None,
        }
    }

    /// The group id.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// The connection, looked up when missing (learning the cluster's
    /// brokers for the next look-up).
    pub(crate) async fn get(&mut self) -> Result<&mut Coordinator, GroupError> {
        if self.conn.is_none() {
            let (c, cluster) = Coordinator::find(
                &self.transport,
                self.brokers.all(),
                &self.group,
                &self.client_id,
                self.timeout,
            )
            .await?;
            self.brokers.learn(cluster);
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }

    /// Forgets the connection after `e` when it says the coordinator moved,
    /// or was not the broker's answer at all (network, timeout).
    pub(crate) fn on_error(&mut self, e: &GroupError) {
        match e {
            GroupError::Broker { error, .. } if !coordinator_moved(*error) => {}
            _ => self.conn = None,
        }
    }

    /// Sends `req` to the first known broker that answers: for calls any
    /// broker serves (metadata, group configs).
    pub(crate) async fn any_broker<R: Request + Clone>(
        &self,
        req: R,
        version: i16,
    ) -> Result<R::Response, GroupError> {
        let mut last = None;
        for broker in self.brokers.all() {
            let mut conn = Coordinator::new(
                broker.clone(),
                &self.transport,
                &self.client_id,
                self.timeout,
            );
            match conn.call(req.clone(), version).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(GroupError::NoBootstrap))
    }

    /// The group's setting `key` (a KIP-848 group config, such as
    /// `consumer.session.timeout.ms`; the broker's `group.*` setting is its
    /// default), read with DescribeConfigs; `None` when the broker names
    /// no value.
    pub(crate) async fn group_config(
        &self,
        key: &'static str,
    ) -> Result<Option<String>, GroupError> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(GROUP_RESOURCE)
                .with_resource_name(StrBytes::from_string(self.group.clone()))
                .with_configuration_keys(Some(vec![StrBytes::from_static_str(key)])),
        ]);
        let resp = self.any_broker(req, 4).await?;
        for r in &resp.results {
            check(ApiKey::DescribeConfigs, r.error_code)?;
            if let Some(v) = r
                .configs
                .iter()
                .find(|c| c.name.as_str() == key)
                .and_then(|c| c.value.as_ref())
            {
                return Ok(Some(v.as_str().to_owned()));
            }
        }
        Ok(None)
    }

    /// Where a heartbeat task finds the coordinator again.
    pub(crate) fn locator(&self) -> super::heartbeat::Locator {
        super::heartbeat::Locator {
            coordinator: self.conn.as_ref().map(|c| c.addr().to_owned()),
            brokers: self.brokers.all().to_vec(),
            transport: self.transport.clone(),
            client_id: self.client_id.clone(),
            timeout: self.timeout,
        }
    }
}

/// Where to look for a coordinator: the bootstrap brokers first, then every
/// broker of the cluster learned at the last lookup, so a group member or
/// the transactional producer finds its coordinator through any live broker
/// even when every bootstrap broker is gone.
#[derive(Debug, Clone)]
pub(crate) struct Brokers {
    list: Vec<String>,
    bootstrap: usize,
}

impl Brokers {
    /// The bootstrap brokers alone.
    pub(crate) fn new(bootstrap: &[String]) -> Self {
        Self {
            list: bootstrap.to_vec(),
            bootstrap: bootstrap.len(),
        }
    }

    /// Every broker to try, bootstrap first.
    pub(crate) fn all(&self) -> &[String] {
        &self.list
    }

    /// Keeps the bootstrap brokers and replaces the learned ones with the
    /// cluster's current brokers (nothing changes when `cluster` is empty).
    pub(crate) fn learn(&mut self, cluster: Vec<String>) {
        if cluster.is_empty() {
            return;
        }
        self.list.truncate(self.bootstrap);
        for b in cluster {
            if !self.list.contains(&b) {
                self.list.push(b);
            }
        }
    }
}
