//! The transactional producer of exactly-once delivery (`--guarantee
//! exactly-once`): Kafka's transaction protocol, which `rskafka` does not
//! speak, on the `kafka-protocol` messages and a coordinator connection of
//! its own, as [`crate::group::coordinator`] does for groups.
//!
//! One [`Transactions`] per process, under one transactional id. Its life:
//!
//! 1. [`Transactions::init`]: `InitProducerId` with the transactional id
//!    gives a producer id and a new epoch. The same id used again (the
//!    process restarted, or another one took its place) fences the older
//!    producer and aborts the transaction it left open.
//! 2. Deliveries hold [`Transactions::enter`]'s guard while they produce.
//!    Before the first record of a transaction reaches a partition, that
//!    partition is added to it (`AddPartitionsToTxn`); every batch carries
//!    the producer id, epoch, transactional flag and the partition's next
//!    sequence number (one produce in flight per partition, so sequences
//!    reach the broker in order, and a retried batch is recognised as a
//!    duplicate instead of written twice).
//! 3. The membership closes the transaction ([`Transactions::close`]
//!    waits for deliveries in flight and holds new ones back), writes the
//!    state checkpoints, adds the group's offsets (`AddOffsetsToTxn`, then
//!    `TxnOffsetCommit` through the group coordinator, with the member's
//!    generation), and commits (`EndTxn`). Output, dead letters, side
//!    records, checkpoints and input offsets become visible together, or,
//!    on an abort or a crash, none of them.
//!
//! Retries follow Kafka's producer: `CONCURRENT_TRANSACTIONS` (the last
//! transaction still completing) and a coordinator that is loading or has
//! moved are retried with backoff; `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`
//! is fatal. An epoch the brokers no longer accept ends the transaction,
//! which is then aborted, and [`Transactions::restart`] finds out why:
//!
//! - the coordinator aborted the transaction because it outlived the
//!   transaction timeout (a stalled process, a long rebalance): it bumped
//!   the epoch by one and left the transaction `CompleteAbort` under this
//!   producer id (`DescribeTransactions` shows it). `InitProducerId` with
//!   the producer's id and epoch (KIP-360/KIP-588) gives it the epoch to go
//!   on with, in process: it rejoins from the committed offsets;
//! - another producer initialised the same transactional id: the
//!   coordinator refuses that `InitProducerId` as fenced
//!   ([`TxnError::Fenced`]) and the process stops.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, DescribeTransactionsRequest,
    EndTxnRequest, GroupId, InitProducerIdRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::backoff::Backoff;
use crate::group::GroupError;
use crate::group::coordinator::{Brokers, Coordinator, Key, TxnProducer, coordinator_moved};
use crate::kafka::{ErrorName, KafkaError, KafkaSettings, access};

pub(crate) use super::sequences::Lane;
use super::sequences::Sequences;

/// How long retries of one transactional call may go on before the call
/// fails (Kafka's `max.block.ms` default).
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// How long to wait before retrying what an unfinished commit refused
/// (`CONCURRENT_TRANSACTIONS`, and the `NOT_ENOUGH_REPLICAS` Kafka 4's
/// produce verification answers instead): the last EndTxn's markers are
/// being written, which takes milliseconds. Java's producer waits 20 ms.
pub(crate) const CONCURRENT_RETRY: Duration = Duration::from_millis(20);

/// How many produce attempts may wait [`CONCURRENT_RETRY`] before the
/// ordinary broker backoff applies.
pub(crate) const CONCURRENT_RETRIES: u32 = 10;

/// Why a transactional call failed.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Another producer with the same transactional id started: this one
    /// must stop.
    #[error(
        "transactional id {id} was fenced ({error}): another pipeline-host started with the same transactional id; this process stops, and nothing of its open transaction becomes visible"
    )]
    Fenced {
        /// The transactional id.
        id: String,
        /// The broker's error.
        error: String,
    },
    /// The brokers' ACLs deny this principal the transactional id (WRITE
    /// on the `TransactionalId` resource): the pipeline stops, as for any
    /// denied operation.
    #[error(transparent)]
    Denied(KafkaError),
    /// A delivery in the transaction failed, so it was aborted instead of
    /// committed.
    #[error(
        "transactional id {id}: the transaction was aborted, not committed, because a delivery in it failed: {why}"
    )]
    Doomed {
        /// The transactional id.
        id: String,
        /// The failed delivery.
        why: String,
    },
    /// The call failed; the transaction must be aborted.
    #[error("transactional id {id}: {call:?} failed: {source}")]
    Call {
        /// The transactional id.
        id: String,
        /// The API.
        call: ApiKey,
        /// What went wrong.
        #[source]
        source: GroupError,
    },
}

/// What the transaction coordinator knows of the current transaction.
#[derive(Debug, Default)]
struct Open {
    /// Partitions added to it.
    added: HashSet<(String, i32)>,
    /// The group's offsets are added to it.
    offsets: bool,
    /// When its first partition was added.
    since: Option<Instant>,
}

/// The process's transactional producer.
#[derive(Debug)]
pub struct Transactions {
    id: String,
    group: String,
    timeout: Duration,
    kafka: KafkaSettings,
    /// Deliveries read, the commit writes: a commit waits for deliveries in
    /// flight and holds new ones back until it is done.
    gate: Arc<RwLock<()>>,
    coordinator: tokio::sync::Mutex<Option<Coordinator>>,
    /// Where to look the coordinator up: bootstrap, then the cluster's
    /// brokers learned at the last look-up.
    brokers: Mutex<Brokers>,
    open: tokio::sync::Mutex<Open>,
    /// The producer id and epoch, and the next sequence per partition.
    sequences: Sequences,
    /// Why the open transaction may only be aborted: a delivery in it
    /// failed, so it holds part of a batch whose offsets never follow.
    doomed: Mutex<Option<Doom>>,
}

impl Transactions {
    /// Registers transactional id `id` (for `group`'s offsets) with a
    /// transaction timeout, fencing any earlier producer with the same id.
    pub async fn init(
        kafka: &KafkaSettings,
        id: String,
        group: String,
        timeout: Duration,
    ) -> Result<Self, TxnError> {
        let sequences = Sequences::new(Some(id.clone()));
        let t = Self {
            id,
            group,
            timeout,
            kafka: kafka.clone(),
            gate: Arc::new(RwLock::new(())),
            coordinator: tokio::sync::Mutex::new(None),
            brokers: Mutex::new(Brokers::new(&kafka.bootstrap)),
            open: tokio::sync::Mutex::new(Open::default()),
            sequences,
            doomed: Mutex::default(),
        };
        t.init_producer(None).await?;
        Ok(t)
    }

    /// The transactional id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The producer as the group coordinator needs it for TxnOffsetCommit.
    pub fn producer(&self) -> TxnProducer {
        let (producer_id, producer_epoch) = self.sequences.producer();
        TxnProducer {
            transactional_id: StrBytes::from_string(self.id.clone()),
            producer_id,
            producer_epoch,
        }
    }

    /// Held by a delivery while it produces, so that a commit never
    /// covers half of one.
    pub async fn enter(&self) -> OwnedRwLockReadGuard<()> {
        self.gate.clone().read_owned().await
    }

    /// Waits for every delivery in flight and holds new ones back, for a
    /// commit or an abort.
    pub async fn close(&self) -> OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// True when a transaction is open (a partition or offsets added).
    pub async fn is_open(&self) -> bool {
        let open = self.open.lock().await;
        !open.added.is_empty() || open.offsets
    }

    /// The sequence lane of `topic`/`partition`.
    pub(crate) async fn lane(&self, topic: &str, partition: i32) -> Lane {
        self.sequences.lane(topic, partition).await
    }

    /// Adds `topic`/`partition` to the open transaction (opening one),
    /// once per transaction.
    pub(crate) async fn add_partition(&self, topic: &str, partition: i32) -> Result<(), TxnError> {
        let mut open = self.open.lock().await;
        if open.added.contains(&(topic.to_owned(), partition)) {
            return Ok(());
        }
        let p = self.producer();
        let topics = vec![
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![partition]),
        ];
        let req = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(p.transactional_id.into())
            .with_v3_and_below_producer_id(p.producer_id.into())
            .with_v3_and_below_producer_epoch(p.producer_epoch)
            .with_v3_and_below_topics(topics);
        self.call(req, 3, |r| {
            r.results_by_topic_v3_and_below
                .iter()
                .flat_map(|t| &t.results_by_partition)
                .map(|r| r.partition_error_code)
                .find(|c| *c != 0)
                .unwrap_or(0)
        })
        .await?;
        open.added.insert((topic.to_owned(), partition));
        open.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Adds the group's offsets to the open transaction (AddOffsetsToTxn),
    /// before the membership commits them in it.
    pub async fn add_offsets(&self) -> Result<(), TxnError> {
        let mut open = self.open.lock().await;
        if open.offsets {
            return Ok(());
        }
        let p = self.producer();
        let group = GroupId(StrBytes::from_string(self.group.clone()));
        let req = AddOffsetsToTxnRequest::default()
            .with_transactional_id(p.transactional_id.into())
            .with_producer_id(p.producer_id.into())
            .with_producer_epoch(p.producer_epoch)
            .with_group_id(group);
        self.call(req, 3, |r| r.error_code).await?;
        open.offsets = true;
        open.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Marks the open transaction abort-only: a delivery in it failed
    /// (a refused dead letter, side record or checkpoint, or a produce
    /// error that ends the transaction). Its records may include outputs of
    /// a batch whose offsets are never committed, so committing it would
    /// make them visible once per restart. Called while the failed delivery
    /// still holds its [`Transactions::enter`] guard, so no commit sneaks in
    /// between the failure and the mark. `recoverable` when the brokers
    /// ended the transaction (an epoch or sequence they no longer accept):
    /// the pipeline aborts it and goes on from the committed offsets,
    /// instead of stopping.
    pub fn doom(&self, why: impl Into<String>, recoverable: bool) {
        self.doomed
            .lock()
            .expect("doomed")
            .get_or_insert_with(|| Doom {
                why: why.into(),
                recoverable,
            });
    }

    /// Why the open transaction may only be aborted, if it may.
    pub fn doomed(&self) -> Option<Doom> {
        self.doomed.lock().expect("doomed").clone()
    }

    /// Ends the open transaction: commits it, or aborts it. Nothing is
    /// sent when none is open. Returns how long it was open. A commit of a
    /// doomed transaction ([`Transactions::doom`]) aborts it instead and
    /// fails with [`TxnError::Doomed`].
    pub async fn end(&self, commit: bool) -> Result<Option<Duration>, TxnError> {
        let mut open = self.open.lock().await;
        let doomed = self.doomed();
        if commit && let Some(doom) = doomed {
            drop(open);
            Box::pin(self.end(false)).await?;
            return Err(TxnError::Doomed {
                id: self.id.clone(),
                why: doom.why,
            });
        }
        if open.added.is_empty() && !open.offsets {
            return Ok(None);
        }
        let p = self.producer();
        let req = EndTxnRequest::default()
            .with_transactional_id(p.transactional_id.into())
            .with_producer_id(p.producer_id.into())
            .with_producer_epoch(p.producer_epoch)
            .with_committed(commit);
        self.call(req, 3, |r| r.error_code).await?;
        let age = open.since.map(|s| s.elapsed());
        *open = Open::default();
        if !commit {
            *self.doomed.lock().expect("doomed") = None;
        }
        Ok(age)
    }

    /// After an abort: a new epoch for the next transaction (sequences
    /// start again). `InitProducerId` names this producer's id and epoch
    /// (KIP-360), so it never fences a producer that took the id since:
    /// the coordinator refuses it as fenced then, and the process stops.
    /// When the coordinator itself aborted the transaction for its timeout
    /// and bumped the epoch, it accepts the old epoch (KIP-588) and the
    /// producer goes on ([`Restarted::TimedOut`]).
    pub async fn restart(&self) -> Result<Restarted, TxnError> {
        *self.open.lock().await = Open::default();
        *self.doomed.lock().expect("doomed") = None;
        let (pid, epoch) = self.sequences.producer();
        let timed_out = match self.timed_out(pid, epoch).await {
            Ok(t) => t,
            Err(e @ TxnError::Denied(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(transactional_id = %self.id, error = %e, "cannot describe the transaction; going on without knowing whether it timed out");
                false
            }
        };
        if timed_out {
            tracing::warn!(transactional_id = %self.id, producer_id = pid, epoch, timeout = ?self.timeout, "the transaction coordinator aborted this producer's transaction: it stayed open longer than the transaction timeout; going on with a new epoch from the last committed offsets");
        }
        match self.init_producer(Some((pid, epoch))).await {
            // A coordinator that does not keep the epoch before its
            // timeout's bump: take up the bumped one, which it bumps again
            // only if no other producer initialised the id since.
            Err(TxnError::Fenced { .. }) if timed_out => {
                self.init_producer(Some((pid, epoch.saturating_add(1))))
                    .await?;
            }
            r => r?,
        }
        Ok(if timed_out {
            Restarted::TimedOut
        } else {
            Restarted::Epoch
        })
    }

    /// True when the coordinator aborted this producer's last transaction
    /// for its timeout, and nothing initialised the id since: the id still
    /// has producer id `pid`, the epoch is `epoch + 1` (the bump of the
    /// timeout's abort), and the transaction is aborting or aborted.
    /// Another producer's `InitProducerId` leaves a higher epoch, or an
    /// empty or ongoing transaction; the producer's own abort leaves the
    /// epoch as it was.
    async fn timed_out(&self, pid: i64, epoch: i16) -> Result<bool, TxnError> {
        let req = DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![StrBytes::from_string(self.id.clone()).into()]);
        let resp = self
            .call(req, 0, |r| {
                r.transaction_states.first().map_or(0, |s| s.error_code)
            })
            .await?;
        Ok(resp.transaction_states.first().is_some_and(|state| {
            state.producer_id.0 == pid
                && i32::from(state.producer_epoch) == i32::from(epoch) + 1
                && matches!(
                    state.transaction_state.as_str(),
                    "PrepareAbort" | "CompleteAbort"
                )
        }))
    }

    /// `InitProducerId`: this id's producer id and a new epoch (any
    /// transaction the id left open is aborted first); sequences start
    /// from 0. `expected` is the producer id and epoch this producer holds
    /// (none at start, which fences any earlier producer of the id); the
    /// coordinator refuses it as fenced when the epoch has moved on.
    async fn init_producer(&self, expected: Option<(i64, i16)>) -> Result<(), TxnError> {
        let timeout_ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
        let (expected_id, expected_epoch) = expected.unwrap_or((-1, -1));
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(StrBytes::from_string(self.id.clone()).into()))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(expected_id.into())
            .with_producer_epoch(expected_epoch);
        let resp = self.call(req, 3, |r| r.error_code).await?;
        let (pid, epoch) = (resp.producer_id.0, resp.producer_epoch);
        self.sequences.set(pid, epoch);
        tracing::info!(transactional_id = %self.id, producer_id = pid, epoch, "transactional producer ready");
        Ok(())
    }

    /// Sends `req` (at `version`) to the transaction coordinator, looking
    /// it up first, and retries what Kafka's producer retries, for at most
    /// [`CALL_LIMIT`]; `code` reads the broker's error from the response.
    /// A moved-on epoch is [`TxnError::Fenced`] only from `InitProducerId`,
    /// which tells a timed-out transaction from another producer; from any
    /// other call it fails the call, and the transaction is aborted.
    async fn call<R>(
        &self,
        req: R,
        version: i16,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response, TxnError>
    where
        R: Request + Clone,
    {
        let call = ApiKey::try_from(R::KEY).expect("kafka-protocol request types have known keys");
        let started = Instant::now();
        let mut backoff = Backoff::broker();
        loop {
            let mut slot = self.coordinator.lock().await;
            let result = match self.coordinator_in(&mut slot).await {
                Ok(c) => c.call(req.clone(), version).await,
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(resp) => match code(&resp).err() {
                    None => return Ok(resp),
                    Some(e) => e,
                },
                // The coordinator lookup answers for the ACLs too.
                Err(source) if source.broker_error().is_some_and(denial) => {
                    source.broker_error().expect("checked")
                }
                Err(source) => {
                    *slot = None;
                    if started.elapsed() > CALL_LIMIT {
                        return Err(self.failed(call, source));
                    }
                    drop(slot);
                    let delay = backoff.next_delay();
                    tracing::warn!(transactional_id = %self.id, ?call, error = %source, retry_in = ?delay, "transactional call failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            match error {
                ResponseError::TransactionalIdAuthorizationFailed => {
                    return Err(TxnError::Denied(access::denied(
                        &self.kafka,
                        "WRITE",
                        &format!("transactional-id {}", self.id),
                    )));
                }
                ResponseError::GroupAuthorizationFailed => {
                    return Err(TxnError::Denied(access::denied_group(
                        &self.kafka,
                        &self.group,
                    )));
                }
                ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch
                    if call == ApiKey::InitProducerId =>
                {
                    return Err(TxnError::Fenced {
                        id: self.id.clone(),
                        error: ErrorName(error).to_string(),
                    });
                }
                e if coordinator_moved(e) => *slot = None,
                ResponseError::ConcurrentTransactions => {}
                e => {
                    return Err(self.failed(call, GroupError::Broker { call, error: e }));
                }
            }
            drop(slot);
            if started.elapsed() > CALL_LIMIT {
                return Err(self.failed(call, GroupError::Broker { call, error }));
            }
            let delay = if error == ResponseError::ConcurrentTransactions {
                CONCURRENT_RETRY
            } else {
                backoff.next_delay()
            };
            tracing::debug!(transactional_id = %self.id, ?call, error = %ErrorName(error), retry_in = ?delay, "transactional call retried");
            tokio::time::sleep(delay).await;
        }
    }

    /// The transaction coordinator connection, looked up when missing.
    async fn coordinator_in<'a>(
        &self,
        slot: &'a mut Option<Coordinator>,
    ) -> Result<&'a mut Coordinator, GroupError> {
        if slot.is_none() {
            // Through every broker known, not only the bootstrap ones: the
            // producer goes on when those are gone, as a group member does.
            let brokers = self.brokers.lock().expect("brokers").all().to_vec();
            let (c, cluster) = Coordinator::find_key(
                &self.kafka.transport,
                &brokers,
                Key::Transaction(&self.id),
                &self.kafka.client_id,
                self.kafka.request_timeout,
            )
            .await?;
            self.brokers.lock().expect("brokers").learn(cluster);
            *slot = Some(c);
        }
        Ok(slot.as_mut().expect("set above"))
    }

    fn failed(&self, call: ApiKey, source: GroupError) -> TxnError {
        TxnError::Call {
            id: self.id.clone(),
            call,
            source,
        }
    }
}

/// Why the open transaction may only be aborted ([`Transactions::doom`]).
#[derive(Debug, Clone)]
pub struct Doom {
    /// The failed delivery.
    pub why: String,
    /// The brokers ended the transaction: abort it and go on, rather than
    /// stop.
    pub recoverable: bool,
}

/// How [`Transactions::restart`] went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarted {
    /// The producer's epoch was still current: bumped.
    Epoch,
    /// The coordinator had aborted the transaction for its timeout: the
    /// producer took up the epoch it bumped.
    TimedOut,
}

/// True for the errors of a principal the brokers' ACLs deny the
/// transactional id or the group.
fn denial(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::TransactionalIdAuthorizationFailed | ResponseError::GroupAuthorizationFailed
    )
}

/// True for produce errors that mean this producer's transaction cannot go
/// on (fenced, an epoch or sequence the broker refuses, a transaction it
/// aborted).
pub(crate) fn ends_transaction(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::ProducerFenced
            | ResponseError::InvalidProducerEpoch
            | ResponseError::OutOfOrderSequenceNumber
            | ResponseError::UnknownProducerId
            | ResponseError::InvalidTxnState
            | ResponseError::InvalidProducerIdMapping
            | ResponseError::TransactionAbortable
            | ResponseError::TransactionCoordinatorFenced
    )
}
