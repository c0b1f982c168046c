//! Producer ids and sequence numbers: what makes a broker keep one copy of
//! a batch the sink sends twice (a retry after a timeout or a leader
//! failover). Both the transactional producer ([`super::transaction`])
//! and the idempotent producer of at-least-once delivery ([`Idempotence`],
//! on by default as in Kafka's Java producer since 3.0) write every batch
//! with a producer id, an epoch and the partition's next sequence number,
//! one batch in flight per partition ([`Lane`]), so sequences reach the
//! broker in order and `DUPLICATE_SEQUENCE_NUMBER` means "already written".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kafka_protocol::error::ParseResponseErrorCode as _;
use kafka_protocol::messages::InitProducerIdRequest;
use rskafka::client::partition::ProducerBatch;
use tokio::sync::OwnedMutexGuard;

use crate::group::GroupError;
use crate::group::coordinator::{Brokers, Coordinator};
use crate::kafka::KafkaSettings;

/// The sequence lane of one partition: held while a batch is produced
/// there, so batches reach the broker in sequence order.
pub(crate) struct Lane {
    next: OwnedMutexGuard<i32>,
    batch: ProducerBatch,
}

impl Lane {
    /// The producer fields of the next batch.
    pub(crate) fn batch(&self) -> &ProducerBatch {
        &self.batch
    }

    /// The batch of `records` records was written: the next one follows.
    pub(crate) fn advance(&mut self, records: usize) {
        // Sequences wrap at i32::MAX, as Kafka's producer does.
        let next = i64::from(*self.next) + records as i64;
        *self.next = (next % (i64::from(i32::MAX) + 1)) as i32;
        self.batch.base_sequence = *self.next;
    }
}

/// Next sequence per partition, each behind the lock its produce holds.
type Lanes = HashMap<(String, i32), Arc<tokio::sync::Mutex<i32>>>;

/// A producer id and epoch, and the next sequence of every partition it
/// writes.
#[derive(Debug)]
pub(crate) struct Sequences {
    /// The transactional id, for a transactional producer.
    transactional_id: Option<String>,
    producer: Mutex<(i64, i16)>,
    lanes: Mutex<Lanes>,
}

impl Sequences {
    /// No producer id yet.
    pub(crate) fn new(transactional_id: Option<String>) -> Self {
        Self {
            transactional_id,
            producer: Mutex::new((-1, -1)),
            lanes: Mutex::default(),
        }
    }

    /// The producer id and epoch.
    pub(crate) fn producer(&self) -> (i64, i16) {
        *self.producer.lock().expect("producer")
    }

    /// A new producer id or epoch: sequences start again from 0.
    pub(crate) fn set(&self, producer_id: i64, epoch: i16) {
        *self.producer.lock().expect("producer") = (producer_id, epoch);
        self.lanes.lock().expect("lanes").clear();
    }

    /// The sequence lane of `topic`/`partition`.
    pub(crate) async fn lane(&self, topic: &str, partition: i32) -> Lane {
        let cell = self
            .lanes
            .lock()
            .expect("lanes")
            .entry((topic.to_owned(), partition))
            .or_default()
            .clone();
        let next = cell.lock_owned().await;
        let (producer_id, producer_epoch) = self.producer();
        let batch = ProducerBatch {
            transactional_id: self.transactional_id.clone(),
            producer_id,
            producer_epoch,
            base_sequence: *next,
        };
        Lane { next, batch }
    }
}

/// True for the produce errors that say the broker no longer knows this
/// (non-transactional) producer's sequence: a new producer id fixes them.
pub(crate) fn lost(e: kafka_protocol::ResponseError) -> bool {
    use kafka_protocol::ResponseError as E;
    matches!(
        e,
        E::OutOfOrderSequenceNumber
            | E::UnknownProducerId
            | E::InvalidProducerEpoch
            | E::InvalidProducerIdMapping
    )
}

/// The idempotent producer of at-least-once delivery: a producer id from
/// `InitProducerId` without a transactional id (any broker answers it),
/// and sequences on every batch.
#[derive(Debug)]
pub struct Idempotence {
    kafka: KafkaSettings,
    /// Where to ask: bootstrap, then the brokers learned at the last ask,
    /// so a new producer id is found when the bootstrap brokers are gone.
    brokers: Mutex<Brokers>,
    pub(crate) sequences: Sequences,
    /// Serialises resets, so partitions failing together take one new id.
    reset: tokio::sync::Mutex<()>,
}

impl Idempotence {
    /// Gets a producer id from the brokers.
    pub async fn init(kafka: &KafkaSettings) -> Result<Self, GroupError> {
        let i = Self {
            kafka: kafka.clone(),
            brokers: Mutex::new(Brokers::new(&kafka.bootstrap)),
            sequences: Sequences::new(None),
            reset: tokio::sync::Mutex::new(()),
        };
        i.new_producer_id().await?;
        Ok(i)
    }

    /// After the broker lost this producer's state or refused a sequence
    /// (`UNKNOWN_PRODUCER_ID`, `OUT_OF_ORDER_SEQUENCE_NUMBER`,
    /// `INVALID_PRODUCER_EPOCH`) for a batch written as `failed`: a new
    /// producer id, unless another partition already took one.
    pub(crate) async fn reset(&self, failed: (i64, i16)) -> Result<(), GroupError> {
        let _one = self.reset.lock().await;
        if self.sequences.producer() != failed {
            return Ok(());
        }
        self.new_producer_id().await
    }

    async fn new_producer_id(&self) -> Result<(), GroupError> {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
        let mut last = GroupError::NoBootstrap;
        let brokers = self.brokers.lock().expect("brokers").all().to_vec();
        for broker in &brokers {
            let mut c = Coordinator::new(
                broker.clone(),
                &self.kafka.transport,
                &self.kafka.client_id,
                self.kafka.request_timeout,
            );
            match c.call(req.clone(), 3).await {
                Ok(resp) => match resp.error_code.err() {
                    None => {
                        if let Ok(cluster) = c.brokers().await {
                            self.brokers.lock().expect("brokers").learn(cluster);
                        }
                        let (pid, epoch) = (resp.producer_id.0, resp.producer_epoch);
                        self.sequences.set(pid, epoch);
                        tracing::info!(producer_id = pid, epoch, "idempotent producer ready");
                        return Ok(());
                    }
                    Some(error) => {
                        last = GroupError::Broker {
                            call: kafka_protocol::messages::ApiKey::InitProducerId,
                            error,
                        }
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_as_kafkas_producer_does() {
        let cell = Arc::new(tokio::sync::Mutex::new(i32::MAX - 1));
        let next = cell.clone().try_lock_owned().expect("free");
        let mut lane = Lane {
            next,
            batch: ProducerBatch {
                transactional_id: Some("t".into()),
                producer_id: 1,
                producer_epoch: 0,
                base_sequence: i32::MAX - 1,
            },
        };
        lane.advance(3);
        assert_eq!(lane.batch().base_sequence, 1);
        lane.advance(5);
        assert_eq!(lane.batch().base_sequence, 6);
    }
}
