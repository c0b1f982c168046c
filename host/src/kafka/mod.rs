//! The Kafka connection: building the `rskafka` client with a bounded,
//! logged wait for the brokers, topic discovery and creation, and the
//! timeout wrapper every network call goes through.
//!
//! - [`transport`]: how connections to brokers are made (one place for
//!   rskafka's connections and the host's own): TCP, TLS, SASL.
//! - [`security`]: the TLS and SASL settings behind it.
//! - [`topic_partition`]: the identity of an input partition.
//! - `wire`: Kafka framing for the connections the host opens itself.

pub(crate) mod access;
pub mod security;
pub mod topic_partition;
pub mod transport;
pub(crate) mod wire;

pub use topic_partition::TopicPartition;
pub use wire::ErrorName;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;

use crate::backoff::Backoff;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

/// Errors of the Kafka layer; each says which broker, topic or partition.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The brokers could not be reached before the deadline.
    #[error(
        "cannot reach the Kafka brokers {brokers} after {waited:?}: {last_error}; check --bootstrap and that the brokers are up"
    )]
    Unreachable {
        /// The bootstrap list.
        brokers: String,
        /// How long we tried.
        waited: Duration,
        /// The last error seen.
        last_error: String,
    },
    /// A broker refused our TLS or SASL settings: retrying cannot help.
    #[error("{0}")]
    Refused(transport::ConnectError),
    /// A topic does not exist and creating topics is off.
    #[error(
        "topic {topic} does not exist; create it or run with topic creation on (--create-topics)"
    )]
    MissingTopic {
        /// The topic.
        topic: String,
    },
    /// The brokers' ACLs deny this principal an operation the pipeline
    /// needs: retrying cannot help.
    #[error(
        "{principal} is not authorized to {operation} {resource}: the brokers' ACLs deny it; grant it (kafka-acls --add --allow-principal {principal} --operation {operation} --{resource}) and start again"
    )]
    Denied {
        /// The operation (`READ`, `WRITE`, `CREATE`).
        operation: String,
        /// The resource: `topic NAME` or `group NAME`.
        resource: String,
        /// `User:NAME`, or a description when the host does not know it.
        principal: String,
    },
    /// A call to the brokers failed.
    #[error("{what} failed: {source}")]
    Call {
        /// What was being done, with topic and partition.
        what: String,
        /// The client error.
        #[source]
        source: ClientError,
    },
    /// A call to the brokers did not answer in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        what: String,
        /// The timeout.
        after: Duration,
    },
}

impl KafkaError {
    /// True when the broker said the offset is outside the partition's log.
    pub fn is_offset_out_of_range(&self) -> bool {
        matches!(
            self,
            KafkaError::Call {
                source: ClientError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                },
                ..
            }
        )
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub(crate) struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub bootstrap: Vec<String>,
    /// Client id sent to the brokers.
    pub client_id: String,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// How long to wait for the brokers at start-up.
    pub connect_timeout: Duration,
    /// How connections are made.
    pub transport: transport::Transport,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap: vec!["127.0.0.1:9092".into()],
            client_id: "pipeline-host".into(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(60),
            transport: transport::Transport::plain(),
        }
    }
}

/// Runs `fut` with `after` as its deadline, naming the call in the error.
pub(crate) async fn timed<T>(
    what: impl FnOnce() -> String,
    after: Duration,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, KafkaError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(KafkaError::Call {
            what: what(),
            source,
        }),
        Err(_) => Err(KafkaError::Timeout {
            what: what(),
            after,
        }),
    }
}

/// Why no bootstrap broker took the probe connection.
enum ProbeFailure {
    /// A refusal that retrying cannot fix (bad credentials or certificate).
    Refused(transport::ConnectError),
    /// Worth retrying: what the last broker tried did.
    Retry(String),
}

/// Opens (and closes) a connection to the first bootstrap broker that
/// accepts one, with the full TLS and SASL opening.
async fn probe(settings: &KafkaSettings, limit: Duration) -> Result<(), ProbeFailure> {
    let mut last = String::from("no bootstrap broker");
    for b in &settings.bootstrap {
        match tokio::time::timeout(limit, settings.transport.connect(b, &settings.client_id)).await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if e.is_fatal() => return Err(ProbeFailure::Refused(e)),
            Ok(Err(e)) => last = format!("{b}: {e}"),
            Err(_) => last = format!("{b}: connect timed out after {limit:?}"),
        }
    }
    Err(ProbeFailure::Retry(last))
}

/// A connected client plus the settings it was built with.
#[derive(Debug, Clone)]
pub(crate) struct Kafka {
    client: Arc<Client>,
    settings: KafkaSettings,
}

impl Kafka {
    /// Connects to the brokers, retrying with a logged exponential backoff
    /// until `settings.connect_timeout` has passed.
    pub async fn connect(settings: KafkaSettings) -> Result<Self, KafkaError> {
        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::broker();
        loop {
            let builder = settings
                .transport
                .configure(ClientBuilder::new(settings.bootstrap.clone()))
                .client_id(settings.client_id.clone())
                .backoff_config(BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                    deadline: Some(settings.request_timeout),
                });
            // A probe connection first, so an absent broker is reported (and
            // retried) here with our backoff instead of inside the client.
            let attempt = match probe(&settings, settings.request_timeout).await {
                Ok(()) => Ok(tokio::time::timeout(settings.request_timeout, builder.build()).await),
                Err(ProbeFailure::Refused(refused)) => return Err(KafkaError::Refused(refused)),
                Err(ProbeFailure::Retry(e)) => Err(e),
            };
            let error = match attempt {
                Err(refused) => refused,
                Ok(attempt) => match attempt {
                    Ok(Ok(client)) => {
                        // Metadata proves the broker answers, not just accepts.
                        let client = Arc::new(client);
                        let kafka = Self {
                            client,
                            settings: settings.clone(),
                        };
                        match kafka.list_topics().await {
                            Ok(_) => {
                                tracing::info!(brokers = %settings.bootstrap.join(","), "connected to Kafka");
                                return Ok(kafka);
                            }
                            Err(e) => e.to_string(),
                        }
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {:?}", settings.request_timeout),
                },
            };
            let waited = start.elapsed();
            let delay = backoff.next_delay();
            if waited + delay > settings.connect_timeout {
                return Err(KafkaError::Unreachable {
                    brokers: settings.bootstrap.join(","),
                    waited,
                    last_error: error,
                });
            }
            tracing::warn!(brokers = %settings.bootstrap.join(","), %error, retry_in = ?delay, "Kafka not reachable yet");
            tokio::time::sleep(delay).await;
        }
    }

    /// The connection settings.
    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// Topic names with their partition counts.
    pub async fn list_topics(&self) -> Result<Vec<(String, i32)>, KafkaError> {
        let topics = timed(
            || "listing topics".into(),
            self.settings.request_timeout,
            self.client.list_topics(),
        )
        .await?;
        Ok(topics
            .into_iter()
            .map(|t| (t.name, t.partitions.len() as i32))
            .collect())
    }

    /// Partition count of `topic`, creating it with `create` =
    /// `Some((partitions, replication_factor))` when it does not exist.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        create: Option<(i32, i16)>,
    ) -> Result<i32, KafkaError> {
        if let Some(n) = self.partitions(topic).await? {
            return Ok(n);
        }
        let Some((partitions, replication)) = create else {
            return Err(KafkaError::MissingTopic {
                topic: topic.into(),
            });
        };
        let controller = self
            .client
            .controller_client()
            .map_err(|source| KafkaError::Call {
                what: "finding the controller".into(),
                source,
            })?;
        let created = timed(
            || format!("creating topic {topic}"),
            self.settings.request_timeout,
            controller.create_topic(topic, partitions, replication, 10_000),
        )
        .await;
        match created {
            Ok(()) => tracing::info!(topic, partitions, replication, "created topic"),
            Err(KafkaError::Call {
                source:
                    ClientError::ServerError {
                        protocol_error:
                            ProtocolError::TopicAuthorizationFailed
                            | ProtocolError::ClusterAuthorizationFailed,
                        ..
                    },
                ..
            }) => {
                return Err(access::denied(
                    &self.settings,
                    "CREATE",
                    &format!("topic {topic}"),
                ));
            }
            Err(KafkaError::Call {
                source:
                    ClientError::ServerError {
                        protocol_error: ProtocolError::TopicAlreadyExists,
                        ..
                    },
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        // Metadata may lag creation briefly.
        for _ in 0..50 {
            if let Some(n) = self.partitions(topic).await? {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(KafkaError::MissingTopic {
            topic: topic.into(),
        })
    }

    /// Partition count of `topic`, `None` when it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        Ok(self
            .list_topics()
            .await?
            .into_iter()
            .find(|(name, _)| name == topic)
            .map(|(_, n)| n)
            .filter(|n| *n > 0))
    }

    /// A client for one partition.
    pub async fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, KafkaError> {
        timed(
            || format!("connecting to {topic}/{partition}"),
            self.settings.request_timeout,
            self.client
                .partition_client(topic, partition, UnknownTopicHandling::Retry),
        )
        .await
        .map(Arc::new)
    }
}

/// A Metadata request for the named topics that never creates one (the
/// host's own connections: the ACL preflight, the group coordinator).
pub(crate) fn metadata_of<'a>(
    topics: impl IntoIterator<Item = &'a str>,
) -> kafka_protocol::messages::MetadataRequest {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    MetadataRequest::default()
        .with_topics(Some(
            topics
                .into_iter()
                .map(|t| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.to_owned()))))
                })
                .collect(),
        ))
        .with_allow_auto_topic_creation(false)
}
