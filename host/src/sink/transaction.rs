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
//! moved are retried with backoff; `PRODUCER_FENCED` and
//! `TRANSACTIONAL_ID_AUTHORIZATION_FAILED` are fatal; an epoch the broker
//! no longer accepts (a transaction it timed out and aborted) ends the
//! transaction, which is then aborted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, GroupId,
    InitProducerIdRequest, TopicName,
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
    doomed: Mutex<Option<String>>,
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
        t.init_producer().await?;
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
        self.call(req, |r| {
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
        self.call(req, |r| r.error_code).await?;
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
    /// between the failure and the mark.
    pub fn doom(&self, why: impl Into<String>) {
        self.doomed
            .lock()
            .expect("doomed")
            .get_or_insert_with(|| why.into());
    }

    /// Why the open transaction may only be aborted, if it may.
    pub fn doomed(&self) -> Option<String> {
        self.doomed.lock().expect("doomed").clone()
    }

    /// Ends the open transaction: commits it, or aborts it. Nothing is
    /// sent when none is open. Returns how long it was open. A commit of a
    /// doomed transaction ([`Transactions::doom`]) aborts it instead and
    /// fails with [`TxnError::Doomed`].
    pub async fn end(&self, commit: bool) -> Result<Option<Duration>, TxnError> {
        let mut open = self.open.lock().await;
        let doomed = self.doomed();
        if commit && let Some(why) = doomed {
            drop(open);
            Box::pin(self.end(false)).await?;
            return Err(TxnError::Doomed {
                id: self.id.clone(),
                why,
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
        self.call(req, |r| r.error_code).await?;
        let age = open.since.map(|s| s.elapsed());
        *open = Open::default();
        if !commit {
            *self.doomed.lock().expect("doomed") = None;
        }
        Ok(age)
    }

    /// After an abort for a failed call: a new epoch (the broker may have
    /// bumped it, and sequences start again), then the next transaction.
    pub async fn restart(&self) -> Result<(), TxnError> {
        *self.open.lock().await = Open::default();
        *self.doomed.lock().expect("doomed") = None;
        self.init_producer().await
    }

    /// `InitProducerId`: this id's producer id and a new epoch (any
    /// transaction the id left open is aborted first); sequences start
    /// from 0.
    async fn init_producer(&self) -> Result<(), TxnError> {
        let timeout_ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(StrBytes::from_string(self.id.clone()).into()))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
        let resp = self.call(req, |r| r.error_code).await?;
        let (pid, epoch) = (resp.producer_id.0, resp.producer_epoch);
        self.sequences.set(pid, epoch);
        tracing::info!(transactional_id = %self.id, producer_id = pid, epoch, "transactional producer ready");
        Ok(())
    }

    /// Sends `req` (v3) to the transaction coordinator, looking it up
    /// first, and retries what Kafka's producer retries, for at most
    /// [`CALL_LIMIT`]; `code` reads the broker's error from the response.
    async fn call<R>(
        &self,
        req: R,
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
                Ok(c) => c.call(req.clone(), 3).await,
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
                ResponseError::ProducerFenced => {
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
            | ResponseError::TransactionalIdAuthorizationFailed
            | ResponseError::TransactionCoordinatorFenced
    )
}
