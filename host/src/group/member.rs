//! One group member: join (with the member-id retry), sync (the leader
//! assigns), start the heartbeat task, commit with the current generation, leave. It
//! follows the coordinator when it moves and reports rebalances and fencing
//! to the caller, which owns the partition workers.
//!
//! Under KIP-848's consumer protocol (chosen by the settings, or by the
//! coordinator's ApiVersions with `auto`, at the first join) the same calls
//! map onto `ConsumerGroupHeartbeat`: a join is a full heartbeat that
//! returns the broker's assignment, the generation is the member epoch, and
//! a leave is a heartbeat at epoch -1 (-2 for a static member).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::assignor::{
    Subscription, assign_subscriptions, decode_assignment, decode_subscription, encode_assignment,
    encode_subscription,
};
use kafka_protocol::ResponseError;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::ApiKey;

use super::consumer::{self, TopicIds};
use super::coordinator::{GroupCoordinator, TxnProducer};
use super::heartbeat::{ConsumerState, Heartbeats, Identity, Session};
use super::{GroupError, GroupProtocol, GroupSettings};
use crate::kafka::topic_partition::listed;
use crate::kafka::{ErrorName, TopicPartition};

/// A member of one consumer group, consuming its input topics.
#[derive(Debug)]
pub struct Member {
    settings: GroupSettings,
    /// The coordinator, looked up through the bootstrap brokers, then
    /// every broker the cluster's metadata named at the last look-up.
    coordinator: GroupCoordinator,
    /// The session the heartbeat task keeps alive (since the last join).
    session: Option<Session>,
    /// The input topics this member subscribes to, with their partition
    /// counts as last seen.
    topics: BTreeMap<String, i32>,
    member_id: String,
    generation: i32,
    owned: Vec<TopicPartition>,
    /// This member assigned the partitions of the current generation.
    leader: bool,
    /// The protocol spoken, once decided (`auto` asks the coordinator).
    protocol: Option<GroupProtocol>,
    /// Consumer protocol: the epoch, owned partitions and topic ids the
    /// heartbeat task shares.
    consumer: ConsumerState,
    /// Consumer protocol: the heartbeat interval the broker asks for.
    interval: Duration,
    /// Consumer protocol: the group's session timeout as the broker has
    /// it (read at each join).
    consumer_session: Duration,
}

impl Member {
    /// A member of `settings.group` for `topics` (name -> partition
    /// count); nothing is sent until [`Member::join`].
    pub fn new(
        settings: GroupSettings,
        kafka: &crate::kafka::KafkaSettings,
        topics: BTreeMap<String, i32>,
    ) -> Self {
        Self {
            coordinator: GroupCoordinator::new(&settings.group, kafka),
            settings,
            session: None,
            topics,
            member_id: String::new(),
            generation: -1,
            owned: Vec::new(),
            leader: false,
            protocol: None,
            consumer: ConsumerState {
                epoch: Arc::new(AtomicI32::new(consumer::JOIN)),
                owned: Arc::new(Mutex::new(Vec::new())),
                ids: TopicIds::default(),
            },
            consumer_session: CONSUMER_SESSION,
            interval: Duration::from_secs(5),
        }
    }

    /// The protocol this member speaks (`None` before its first join).
    pub fn protocol(&self) -> Option<GroupProtocol> {
        self.protocol
    }

    fn is_consumer(&self) -> bool {
        self.protocol == Some(GroupProtocol::Consumer)
    }

    /// How long after a join the assignment may still grow without this
    /// member asking: under the consumer protocol the broker hands a dead
    /// member's partitions on only once its session ends (the group's
    /// session, then a heartbeat or two to hear of it), where a classic
    /// join waits for that itself. `--until-end` does not conclude that
    /// everything is read before then.
    pub fn assignment_settles_in(&self) -> Duration {
        if self.is_consumer() {
            self.consumer_session + 2 * self.interval
        } else {
            Duration::ZERO
        }
    }

    /// Notes the partitions this member's workers own now; consumer-protocol
    /// heartbeats list them, so the broker moves on what was revoked.
    pub fn set_owned(&mut self, partitions: &[TopicPartition]) {
        let mut owned = partitions.to_vec();
        owned.sort();
        *self.consumer.owned.lock().expect("owned") = owned;
    }

    /// The input topics and partition counts this member subscribes to
    /// (and assigns, as leader).
    pub fn topics(&self) -> &BTreeMap<String, i32> {
        &self.topics
    }

    /// True when this member is the group's leader: it assigns, so it is
    /// the one to rebalance when the input grows (as Java's consumer does;
    /// a follower's rejoin with unchanged metadata does not rebalance).
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Notes the input topics as the metadata lists them now; the next
    /// join subscribes to them (and, as leader, assigns them all).
    pub fn set_topics(&mut self, topics: BTreeMap<String, i32>) {
        self.topics = topics;
    }

    /// The current generation (-1 before the first join); under the
    /// consumer protocol, the member epoch.
    pub fn generation(&self) -> i32 {
        if self.is_consumer() && self.generation >= 0 {
            return self.consumer.epoch.load(Ordering::Relaxed);
        }
        self.generation
    }

    /// Joins (or rejoins) the group and returns the partitions assigned to
    /// this member, sorted. `owned` is what it still owns (cooperative).
    pub async fn join(
        &mut self,
        owned: &[TopicPartition],
    ) -> Result<Vec<TopicPartition>, GroupError> {
        let r = async {
            match self.decide().await? {
                GroupProtocol::Consumer => self.join_consumer(owned).await,
                _ => self.join_inner(owned).await,
            }
        }
        .await;
        if let Err(e) = &r {
            self.coordinator.on_error(e);
        }
        r
    }

    /// The protocol to speak: the setting, or with `auto` what the
    /// coordinator offers (asked once, logged).
    async fn decide(&mut self) -> Result<GroupProtocol, GroupError> {
        if let Some(p) = self.protocol {
            return Ok(p);
        }
        let wanted = self.settings.protocol;
        let (p, because) = match (wanted, self.settings.classic_by) {
            (GroupProtocol::Auto, Some(flag)) => (
                GroupProtocol::Classic,
                format!("{flag} is a classic protocol setting"),
            ),
            (GroupProtocol::Auto, None) => {
                if consumer::offered(self.coordinator.get().await?)
                    .await?
                    .consumer
                {
                    (
                        GroupProtocol::Consumer,
                        "the coordinator offers the consumer protocol".into(),
                    )
                } else {
                    (
                        GroupProtocol::Classic,
                        "the coordinator offers only classic".into(),
                    )
                }
            }
            (p, _) => (p, "set".into()),
        };
        tracing::info!(group = %self.settings.group, wanted = wanted.name(), protocol = p.name(), because, "group protocol chosen");
        if p == GroupProtocol::Consumer {
            self.member_id = consumer::new_member_id();
        }
        self.protocol = Some(p);
        Ok(p)
    }

    /// Consumer protocol: a full heartbeat (subscription and owned
    /// partitions) whose answer carries this member's assignment; epoch 0
    /// joins (again, after a fencing, with the same member id).
    async fn join_consumer(
        &mut self,
        owned: &[TopicPartition],
    ) -> Result<Vec<TopicPartition>, GroupError> {
        let s = self.settings.clone();
        let topics: Vec<String> = self.topics.keys().cloned().collect();
        self.consumer.ids = TopicIds::of(self.coordinator.get().await?, &topics).await?;
        let sub = consumer::Subscription {
            instance_id: s.instance_id.as_deref(),
            rebalance_timeout: s.rebalance_timeout,
            topics,
            server_assignor: s.server_assignor.as_deref(),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let epoch = if self.generation < 0 {
                consumer::JOIN
            } else {
                self.consumer.epoch.load(Ordering::Relaxed)
            };
            let req = consumer::heartbeat(
                &s.group,
                &self.member_id,
                epoch,
                Some(&sub),
                Some((&self.consumer.ids, owned)),
            );
            let resp = consumer::send(self.coordinator.get().await?, req).await?;
            match resp.error_code.err() {
                None => {}
                Some(ResponseError::FencedMemberEpoch | ResponseError::UnknownMemberId)
                    if attempts < 3 =>
                {
                    // Rejoin at epoch 0 with the same member id.
                    self.generation = -1;
                    continue;
                }
                Some(ResponseError::FencedInstanceId) => {
                    return Err(GroupError::FencedInstance(
                        s.instance_id.clone().unwrap_or_default(),
                    ));
                }
                Some(error) => {
                    if let Some(m) = &resp.error_message {
                        tracing::warn!(group = %s.group, error = %ErrorName(error), message = %m.as_str(), "ConsumerGroupHeartbeat refused");
                    }
                    return Err(GroupError::Broker {
                        call: ApiKey::ConsumerGroupHeartbeat,
                        error,
                    });
                }
            }
            self.consumer
                .epoch
                .store(resp.member_epoch, Ordering::Relaxed);
            self.generation = resp.member_epoch;
            if resp.heartbeat_interval_ms > 0 {
                self.interval = Duration::from_millis(resp.heartbeat_interval_ms as u64);
            }
            let assigned = match resp
                .assignment
                .as_ref()
                .map(|a| self.consumer.ids.assigned(a))
            {
                Some(Ok(a)) => a,
                // A topic created since the ids were read: read them again.
                Some(Err(id)) if attempts < 3 => {
                    tracing::info!(group = %s.group, topic_id = %id, "assignment names a topic id not known yet; reading the ids again");
                    let topics = sub.topics.clone();
                    self.consumer.ids =
                        TopicIds::of(self.coordinator.get().await?, &topics).await?;
                    continue;
                }
                Some(Err(id)) => {
                    tracing::warn!(group = %s.group, topic_id = %id, "assignment names a topic this member does not read; ignored");
                    Vec::new()
                }
                // A full heartbeat is answered with the assignment; without
                // one, nothing changed.
                None => owned.to_vec(),
            };
            self.owned = assigned;
            self.owned.retain(|tp| self.topics.contains_key(&*tp.topic));
            self.leader = false;
            let read = self
                .coordinator
                .group_config("consumer.session.timeout.ms")
                .await;
            let ms = read
                .as_ref()
                .map(|v| v.as_deref().and_then(|ms| ms.parse::<u64>().ok()));
            self.consumer_session = match ms {
                Ok(Some(ms)) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    tracing::warn!(group = %s.group, answer = ?read, "could not read the group's consumer.session.timeout.ms; assuming Kafka's default, 45 s");
                    CONSUMER_SESSION
                }
            };
            tracing::info!(group = %s.group, protocol = "consumer", epoch = resp.member_epoch, member = %self.member_id, session_ms = self.consumer_session.as_millis() as u64, partitions = %listed(&self.owned), "joined the group");
            return Ok(self.owned.clone());
        }
    }

    /// The partition count of every topic a member of the group
    /// subscribes to: this member's own inputs as it knows them, the others
    /// (members of other pipelines sharing the group id) from the brokers.
    async fn partition_counts(
        &mut self,
        members: &BTreeMap<String, Subscription>,
    ) -> Result<BTreeMap<String, i32>, GroupError> {
        let mut others: Vec<String> = members
            .values()
            .flat_map(|m| m.topics.iter())
            .filter(|t| !self.topics.contains_key(*t))
            .cloned()
            .collect();
        others.sort_unstable();
        others.dedup();
        let mut counts = self.topics.clone();
        if others.is_empty() {
            return Ok(counts);
        }
        let found = self
            .coordinator
            .get()
            .await?
            .partition_counts(&others)
            .await?;
        let group = &self.settings.group;
        tracing::info!(group = %group, topics = ?others, "members of this group read other topics too: each topic goes only to the members that read it");
        for t in &others {
            if !found.contains_key(t) {
                tracing::warn!(group = %group, topic = %t, "a member reads a topic the brokers do not know; it gets none of it");
            }
        }
        counts.extend(found);
        Ok(counts)
    }

    async fn join_inner(
        &mut self,
        owned: &[TopicPartition],
    ) -> Result<Vec<TopicPartition>, GroupError> {
        let s = self.settings.clone();
        let instance = s.instance_id.as_deref();
        let protocols = vec![(
            s.assignor.protocol_name().to_string(),
            encode_subscription(&self.topics.keys().cloned().collect::<Vec<_>>(), owned),
        )];
        let mut attempts = 0;
        let joined = loop {
            attempts += 1;
            let member_id = self.member_id.clone();
            let resp = self
                .coordinator
                .get()
                .await?
                .join_group(
                    &s.group,
                    &member_id,
                    instance,
                    s.session_timeout,
                    s.rebalance_timeout,
                    protocols.clone(),
                )
                .await?;
            match resp.error_code.err() {
                None => break resp,
                Some(ResponseError::MemberIdRequired) if attempts < 3 => {
                    self.member_id = resp.member_id.as_str().to_owned();
                }
                Some(ResponseError::UnknownMemberId) if attempts < 3 => self.member_id.clear(),
                Some(ResponseError::FencedInstanceId) => {
                    return Err(GroupError::FencedInstance(
                        instance.unwrap_or_default().into(),
                    ));
                }
                Some(error) => {
                    return Err(GroupError::Broker {
                        call: ApiKey::JoinGroup,
                        error,
                    });
                }
            }
        };
        self.member_id = joined.member_id.as_str().to_owned();
        self.generation = joined.generation_id;
        let leader = joined.leader.as_str() == self.member_id;
        self.leader = leader;
        let assignments = if leader {
            let members: BTreeMap<String, Subscription> = joined
                .members
                .iter()
                .map(|m| {
                    (
                        m.member_id.as_str().to_owned(),
                        decode_subscription(&m.metadata),
                    )
                })
                .collect();
            let counts = self.partition_counts(&members).await?;
            let plan = assign_subscriptions(s.assignor, &counts, &members);
            tracing::info!(group = %s.group, generation = self.generation, assignor = s.assignor.protocol_name(), plan = ?plan, "leader assigned partitions");
            plan.iter()
                .map(|(m, assigned)| (m.clone(), encode_assignment(assigned)))
                .collect()
        } else {
            Vec::new()
        };
        let (generation, member_id) = (self.generation, self.member_id.clone());
        let synced = self
            .coordinator
            .get()
            .await?
            .sync_group(
                &s.group,
                generation,
                &member_id,
                instance,
                assignments,
                s.rebalance_timeout,
            )
            .await?;
        if let Some(error) = synced.error_code.err() {
            return Err(GroupError::Broker {
                call: ApiKey::SyncGroup,
                error,
            });
        }
        self.owned = decode_assignment(&synced.assignment);
        self.owned.retain(|tp| self.topics.contains_key(&*tp.topic));
        tracing::info!(group = %s.group, generation, member = %member_id, leader, partitions = %listed(&self.owned), "joined the group");
        Ok(self.owned.clone())
    }

    /// Starts heartbeating for the generation just joined, on a task and
    /// connection of its own (see [`super::heartbeat`]).
    pub fn heartbeats(&mut self) -> Heartbeats {
        let mut settings = self.settings.clone();
        let consumer = self.is_consumer().then(|| {
            // The broker's interval, and the group's session (its
            // consumer.session.timeout.ms): a member that hears nothing
            // for that long gives its partitions up, as a classic one does.
            settings.heartbeat_interval = self.interval;
            settings.session_timeout = self.consumer_session;
            self.consumer.clone()
        });
        let who = Identity {
            settings,
            member_id: self.member_id.clone(),
            generation: self.generation,
            consumer,
        };
        let (beats, session) = Heartbeats::start(who, self.coordinator.locator());
        self.session = Some(session);
        beats
    }

    /// Marks this member as fenced: its generation is no longer valid, so
    /// nothing is committed until it has joined again.
    pub fn fenced(&mut self) {
        self.generation = -1;
        if self.is_consumer() {
            // KIP-848: rejoin at epoch 0 with the same member id.
            self.consumer.epoch.store(consumer::JOIN, Ordering::Relaxed);
            return;
        }
        if self.settings.instance_id.is_none() {
            self.member_id.clear();
        }
    }

    /// Commits `offsets` (partition -> next offset to read) with the
    /// current generation. Refuses with [`GroupError::NoGeneration`]
    /// (without calling the broker) when the member has no valid generation.
    pub async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<(), GroupError> {
        self.commit_as(offsets, None).await
    }

    /// [`Member::commit`] inside the transaction of `producer`
    /// (TxnOffsetCommit): the offsets become visible when it commits, and
    /// the broker refuses them when this member's generation is stale.
    pub async fn commit_in(
        &mut self,
        producer: &TxnProducer,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), GroupError> {
        self.commit_as(offsets, Some(producer)).await
    }

    async fn commit_as(
        &mut self,
        offsets: &[(TopicPartition, i64)],
        producer: Option<&TxnProducer>,
    ) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        if self.generation < 0 {
            return Err(GroupError::NoGeneration);
        }
        let (g, m) = (self.generation(), self.member_id.clone());
        let version = if self.is_consumer() { 9 } else { 7 };
        let group = self.settings.group.clone();
        let instance = self.settings.instance_id.clone();
        // A commit to a coordinator that stopped answering gives up when the
        // session must have expired (the heartbeat task then reports it
        // lost), not after the request timeout.
        let deadline = self.session.as_ref().map(Session::deadline);
        let session_timeout = self.settings.session_timeout;
        let r = async {
            let c = self.coordinator.get().await?;
            let broker = c.addr().to_owned();
            let call = async {
                match producer {
                    None => {
                        c.commit(&group, g, &m, instance.as_deref(), offsets, version)
                            .await
                    }
                    Some(producer) => {
                        c.txn_commit(&group, producer, g, &m, instance.as_deref(), offsets)
                            .await
                    }
                }
            };
            match deadline {
                None => call.await,
                Some(d) => match tokio::time::timeout_at(d.into(), call).await {
                    Ok(r) => r,
                    Err(_) => Err(GroupError::Timeout {
                        call: ApiKey::OffsetCommit,
                        broker,
                        after: session_timeout,
                    }),
                },
            }
        }
        .await;
        if let Err(e) = &r {
            self.coordinator.on_error(e);
            if let Some(
                ResponseError::IllegalGeneration
                | ResponseError::UnknownMemberId
                | ResponseError::FencedInstanceId
                | ResponseError::FencedMemberEpoch,
            ) = e.broker_error()
            {
                self.fenced();
            }
        }
        r
    }

    /// Committed offsets of `partitions` (`None` where the group has none).
    pub async fn committed(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, GroupError> {
        let group = self.settings.group.clone();
        let r = async {
            self.coordinator
                .get()
                .await?
                .fetch_offsets(&group, partitions)
                .await
        }
        .await;
        match r {
            Ok(v) => Ok(v.into_iter().collect()),
            Err(e) => {
                self.coordinator.on_error(&e);
                Err(e)
            }
        }
    }

    /// Leaves the group, so the others take over at once. A static member
    /// does not leave: restarted within the session timeout it gets its
    /// partitions back without a rebalance (a rolling restart).
    pub async fn leave(&mut self) {
        if self.member_id.is_empty() {
            return;
        }
        if self.is_consumer() {
            return self.leave_consumer().await;
        }
        if let Some(instance) = &self.settings.instance_id {
            tracing::info!(group = %self.settings.group, instance = %instance, "static member: not leaving the group; a restart within the session timeout keeps the assignment");
            return;
        }
        let (group, m) = (self.settings.group.clone(), self.member_id.clone());
        let instance = self.settings.instance_id.clone();
        let r = async {
            self.coordinator
                .get()
                .await?
                .leave_group(&group, &m, instance.as_deref())
                .await
        }
        .await;
        match r {
            Ok(None) => tracing::info!(group = %group, member = %m, "left the group"),
            Ok(Some(e)) => {
                tracing::warn!(group = %group, error = %ErrorName(e), "LeaveGroup refused")
            }
            Err(e) => tracing::warn!(group = %group, error = %e, "LeaveGroup failed"),
        }
        self.generation = -1;
    }

    /// Consumer protocol: a heartbeat at epoch -1 (a static member: -2,
    /// so its partitions wait for its restart within the session timeout).
    async fn leave_consumer(&mut self) {
        let s = self.settings.clone();
        let req = consumer::leave(&s.group, &self.member_id, s.instance_id.as_deref());
        let r = async { consumer::send(self.coordinator.get().await?, req).await }.await;
        match r.map(|resp| resp.error_code.err()) {
            Ok(None) if s.instance_id.is_some() => {
                tracing::info!(group = %s.group, member = %self.member_id, "static member left for a restart: its partitions wait for it within the session timeout")
            }
            Ok(None) => {
                tracing::info!(group = %s.group, member = %self.member_id, "left the group")
            }
            Ok(Some(e)) => {
                tracing::warn!(group = %s.group, error = %ErrorName(e), "leaving the group refused")
            }
            Err(e) => tracing::warn!(group = %s.group, error = %e, "leaving the group failed"),
        }
        self.generation = -1;
    }
}

/// The consumer protocol's session when the group's cannot be read:
/// Kafka's default `group.consumer.session.timeout.ms`.
const CONSUMER_SESSION: Duration = Duration::from_secs(45);
