//! What the brokers' ACLs let this principal do, checked before anything is
//! consumed: READ on the input topic, WRITE on the output and dead-letter
//! topics (and on side-output and state topics).
//!
//! One Metadata request (v12) names the topics and asks for each topic's
//! authorized operations (KIP-430), so a denial is one clear error naming
//! the operation and the resource, instead of a topic that looks missing
//! (Kafka hides topics a principal may not describe) or a produce that
//! fails record by record later. The group's READ is checked where the
//! group answers (`GROUP_AUTHORIZATION_FAILED` on FindCoordinator or
//! JoinGroup: the membership loop turns it into [`denied_group`]).
//!
//! Written over the host's own connection ([`super::wire`]) because
//! rskafka's metadata call does not ask for authorized operations.

use kafka_protocol::messages::MetadataRequest;

use super::wire::roundtrip;
use super::{KafkaError, KafkaSettings};

/// Kafka's error code for a topic this principal may not describe.
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
/// Kafka's error code for a topic that does not exist.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// `topic_authorized_operations` when the broker did not compute them.
const OPERATIONS_UNKNOWN: i32 = i32::MIN;

/// An ACL operation the pipeline needs (Kafka's `AclOperation` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Consume from a topic, or use a consumer group.
    Read = 3,
    /// Produce to a topic.
    Write = 4,
}

impl Operation {
    /// The name Kafka's tools use (`kafka-acls --operation`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "READ",
            Operation::Write => "WRITE",
        }
    }
}

/// One operation on one topic that the pipeline needs.
#[derive(Debug, Clone)]
pub struct Need {
    /// The topic.
    pub topic: String,
    /// The operation.
    pub operation: Operation,
}

/// The error for a denied `operation` on `resource` (`topic in`,
/// `group g`), naming the principal when the host knows it.
pub fn denied(settings: &KafkaSettings, operation: &str, resource: &str) -> KafkaError {
    KafkaError::Denied {
        operation: operation.to_string(),
        resource: resource.to_string(),
        principal: settings
            .transport
            .sasl
            .as_ref()
            .map(|s| format!("User:{}", s.username))
            .unwrap_or_else(|| "this client's principal".into()),
    }
}

/// The error for a group that refused this principal
/// (`GROUP_AUTHORIZATION_FAILED`): it may not READ the group.
pub fn denied_group(settings: &KafkaSettings, group: &str) -> KafkaError {
    denied(settings, "READ", &format!("group {group}"))
}

/// Checks every need against the topics' authorized operations. Topics
/// that do not exist yet pass (creating them is checked when they are
/// created); a broker that does not report operations passes too.
pub async fn check(settings: &KafkaSettings, needs: &[Need]) -> Result<(), KafkaError> {
    let mut topics: Vec<&str> = needs.iter().map(|n| n.topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    let req =
        super::metadata_of(topics.iter().copied()).with_include_topic_authorized_operations(true);
    let resp = metadata(settings, req).await?;
    for need in needs {
        let Some(t) = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == need.topic))
        else {
            continue;
        };
        let allowed = match t.error_code {
            0 => {
                t.topic_authorized_operations == OPERATIONS_UNKNOWN
                    || t.topic_authorized_operations & (1 << need.operation as i32) != 0
            }
            TOPIC_AUTHORIZATION_FAILED => false,
            UNKNOWN_TOPIC_OR_PARTITION => true,
            code => {
                tracing::debug!(topic = %need.topic, code, "metadata error while checking access");
                true
            }
        };
        if !allowed {
            return Err(denied(
                settings,
                need.operation.name(),
                &format!("topic {}", need.topic),
            ));
        }
    }
    Ok(())
}

/// Sends `req` (Metadata v12) to the first bootstrap broker that answers.
async fn metadata(
    settings: &KafkaSettings,
    req: MetadataRequest,
) -> Result<kafka_protocol::messages::MetadataResponse, KafkaError> {
    let mut last = String::from("no bootstrap broker");
    for broker in &settings.bootstrap {
        let exchange = async {
            let mut stream = settings
                .transport
                .connect(broker, &settings.client_id)
                .await
                .map_err(|e| {
                    if e.is_fatal() {
                        Err(KafkaError::Refused(e))
                    } else {
                        Ok(e.to_string())
                    }
                })?;
            roundtrip(&mut stream, 1, &settings.client_id, req.clone(), 12)
                .await
                .map_err(|e| Ok(e.to_string()))
        };
        match tokio::time::timeout(settings.request_timeout, exchange).await {
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(Err(fatal))) => return Err(fatal),
            Ok(Err(Ok(e))) => last = format!("{broker}: {e}"),
            Err(_) => last = format!("{broker}: no answer within {:?}", settings.request_timeout),
        }
    }
    Err(KafkaError::Timeout {
        what: format!("checking topic access (Metadata) ({last})"),
        after: settings.request_timeout,
    })
}
