//! What the sink does with a produce the brokers answered with an error:
//! retry what retrying can fix (leader moves, timeouts, lost connections,
//! too few in-sync replicas), and end the retry loop for what it cannot.
//!
//! - A **record refusal** (`MESSAGE_TOO_LARGE`, `RECORD_LIST_TOO_LARGE`,
//!   `INVALID_RECORD`, `INVALID_TIMESTAMP`, `CORRUPT_MESSAGE`) is about the
//!   records sent: the sink sends them one by one to find which, and an
//!   output record its topic refuses becomes a dead letter carrying the
//!   broker's error.
//! - Anything else that is not retriable (authorization, policy, an
//!   unsupported format) is a [`SinkError`]: the pipeline stops, committing
//!   nothing past the batch.

use kafka_protocol::ResponseError;
use kafka_protocol::error::ParseResponseErrorCode;
use rskafka::client::error::Error as ClientError;
#[cfg(test)]
use rskafka::client::error::ProtocolError;

use crate::kafka::{ErrorName, KafkaError};

/// A produce the brokers refused for good, with their error named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The brokers refuse these records (the error names why): retrying the
    /// same bytes cannot help, other records may pass.
    Records(ResponseError),
    /// The brokers refuse the pipeline this topic: stop.
    Fatal(String),
    /// The transactional producer cannot go on (exactly-once): its open
    /// transaction is lost; stop.
    Transaction(String),
}

impl Refusal {
    /// The refusal of `what` by `topic`/`partition` as the error that
    /// stops the pipeline.
    pub(super) fn stop(self, topic: &str, partition: i32, what: &'static str) -> SinkError {
        match self {
            Refusal::Records(e) => SinkError::new(topic, partition, what, ErrorName(e).to_string()),
            Refusal::Fatal(e) => SinkError::new(topic, partition, what, e),
            Refusal::Transaction(error) => SinkError {
                topic: topic.into(),
                partition,
                what,
                error,
                hint: "the open transaction is not committed; start the pipeline again: it resumes from the last committed transaction",
                transaction: true,
            },
        }
    }
}

/// The Kafka error code of a failed produce, if the broker answered one.
pub(super) fn code_of(e: &KafkaError) -> Option<ResponseError> {
    match e {
        KafkaError::Call {
            source: ClientError::ServerError { protocol_error, .. },
            ..
        } => protocol_error.code().err(),
        _ => None,
    }
}

/// Classifies a failed produce: `None` when retrying may fix it.
pub(super) fn classify(e: &KafkaError) -> Option<Refusal> {
    if let KafkaError::Denied { .. } | KafkaError::Refused(_) = e {
        return Some(Refusal::Fatal(e.to_string()));
    }
    // Without a code: timeouts, lost connections, retries the client gave
    // up on.
    let error = code_of(e)?;
    let named = ErrorName(error).to_string();
    match error {
        ResponseError::MessageTooLarge
        | ResponseError::RecordListTooLarge
        | ResponseError::InvalidRecord
        | ResponseError::InvalidTimestamp
        | ResponseError::CorruptMessage => Some(Refusal::Records(error)),
        ResponseError::NotLeaderOrFollower
        | ResponseError::LeaderNotAvailable
        | ResponseError::UnknownTopicOrPartition
        | ResponseError::RequestTimedOut
        | ResponseError::NetworkException
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend
        | ResponseError::KafkaStorageError
        | ResponseError::ThrottlingQuotaExceeded
        | ResponseError::BrokerNotAvailable
        | ResponseError::ReplicaNotAvailable
        | ResponseError::UnknownServerError
        | ResponseError::Unknown(_) => None,
        e if super::transaction::ends_transaction(e) => Some(Refusal::Transaction(named)),
        _ => Some(Refusal::Fatal(named)),
    }
}

/// A produce the brokers refused for good, which stops the pipeline:
/// nothing past the batch is committed, so a restart after the fix reads
/// it again.
#[derive(Debug, thiserror::Error)]
#[error(
    "{topic}/{partition} refused {what}: {error}; the pipeline stopped without committing past it: {hint}"
)]
pub struct SinkError {
    /// The topic that refused.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// What was refused: "a dead letter", "a checkpoint", ...
    pub what: &'static str,
    /// The broker's error.
    pub error: String,
    /// What to do about it.
    pub hint: &'static str,
    /// The transactional producer failed (exactly-once), not the topic.
    pub transaction: bool,
}

impl SinkError {
    /// A refusal of `what` by `topic`/`partition` with the broker's `error`.
    pub(crate) fn new(topic: &str, partition: i32, what: &'static str, error: String) -> Self {
        let hint = if error.contains("AUTHORIZATION") {
            "grant this principal WRITE on the topic"
        } else {
            "raise the topic's max.message.bytes (kafka-configs --alter --add-config) or fix what the broker names"
        };
        Self {
            topic: topic.into(),
            partition,
            what,
            error,
            hint,
            transaction: false,
        }
    }
}

/// A broker's answer with `protocol_error` (for tests of the classification).
#[cfg(test)]
fn server_error(protocol_error: ProtocolError) -> KafkaError {
    KafkaError::Call {
        what: "producing".into(),
        source: ClientError::ServerError {
            protocol_error,
            error_message: None,
            request: rskafka::client::error::RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_end_the_retry_loop_and_name_the_broker_error() {
        assert_eq!(
            classify(&server_error(ProtocolError::MessageTooLarge)),
            Some(Refusal::Records(ResponseError::MessageTooLarge))
        );
        assert!(matches!(
            classify(&server_error(ProtocolError::InvalidTimestamp)),
            Some(Refusal::Records(_))
        ));
        assert_eq!(
            classify(&server_error(ProtocolError::TopicAuthorizationFailed)),
            Some(Refusal::Fatal("TOPIC_AUTHORIZATION_FAILED (29)".into()))
        );
        assert_eq!(
            classify(&server_error(ProtocolError::NotLeaderOrFollower)),
            None
        );
        assert_eq!(
            classify(&KafkaError::Timeout {
                what: "producing".into(),
                after: std::time::Duration::from_secs(1)
            }),
            None
        );
    }
}
