//! Consumer groups and committed offsets, which `rskafka` lacks: several
//! `pipeline-host` processes with the same `--group` split the input
//! partitions (classic protocol: JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and commit, per partition, the offset below which every
//! record is delivered.
//!
//! - [`coordinator`]: the connection and the group/offset calls.
//! - `assignor`: range and cooperative-sticky assignment, metadata blobs.
//! - [`heartbeat`]: heartbeats on a task and connection of their own.
//! - `consumer`: KIP-848's consumer protocol (`ConsumerGroupHeartbeat`,
//!   assignment by the broker), which `--group-protocol` chooses.
//! - `member`: one member's state: join with the member-id retry, sync,
//!   heartbeats, commit with the current generation, leave.
//! - `share`: KIP-932 share groups (`--share-group`): heartbeats, share
//!   sessions fetching and acknowledging records one by one.
//!
//! The pipeline's membership loop (`pipeline/membership.rs`) drives a `member::Member`: it starts
//! partition workers for what it is assigned, and before it rejoins it stops
//! the workers of partitions it may lose, waits for their deliveries, and
//! commits. It never commits after the coordinator said its generation is
//! stale, and stops producing for partitions as soon as it may have lost
//! them (fencing is the host's job; brokers have been seen accepting stale
//! commits).

pub(crate) mod assignor;
pub(crate) mod consumer;
pub mod coordinator;
pub mod heartbeat;
pub(crate) mod member;
pub(crate) mod share;

use std::time::Duration;

pub use assignor::Assignor;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;

use crate::kafka::ErrorName;
use crate::kafka::transport::ConnectError;
use crate::kafka::wire::WireError;

/// Errors of the group layer, naming the call and the broker.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No bootstrap broker was given.
    #[error("no bootstrap broker to ask for the group coordinator")]
    NoBootstrap,
    /// The coordinator connection could not be opened.
    #[error("{call:?} to {broker}: cannot connect: {source}")]
    Connect {
        /// The API.
        call: ApiKey,
        /// The coordinator, `host:port`.
        broker: String,
        /// Why the connection failed.
        #[source]
        source: ConnectError,
    },
    /// The exchange failed on the wire (I/O, or a message that does not
    /// encode or decode).
    #[error("{call:?} to {broker} failed: {source}")]
    Wire {
        /// The API.
        call: ApiKey,
        /// The coordinator, `host:port`.
        broker: String,
        /// What failed on the wire.
        #[source]
        source: WireError,
    },
    /// A call did not answer in time.
    #[error("{call:?} to {broker} timed out after {after:?}")]
    Timeout {
        /// The API.
        call: ApiKey,
        /// The coordinator, `host:port`.
        broker: String,
        /// The timeout.
        after: Duration,
    },
    /// A response lacks what the call asked for.
    #[error("{call:?}: the response has {what}")]
    Malformed {
        /// The API.
        call: ApiKey,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The broker answered with an error code.
    #[error("{call:?} failed with {}", ErrorName(*.error))]
    Broker {
        /// The API.
        call: ApiKey,
        /// Kafka's error.
        error: ResponseError,
    },
    /// This member has no valid generation (it was fenced or never
    /// joined): it must rejoin before it commits.
    #[error("not a member of the current generation: rejoin before committing")]
    NoGeneration,
    /// Another process uses this static member's instance id.
    #[error(
        "another member uses group instance id {0}; give each process its own --group-instance-id"
    )]
    FencedInstance(String),
}

impl GroupError {
    /// The broker's error, if the broker answered with one.
    pub fn broker_error(&self) -> Option<ResponseError> {
        match self {
            GroupError::Broker { error, .. } => Some(*error),
            _ => None,
        }
    }
}

/// Group membership settings.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// Group id.
    pub group: String,
    /// Static member id (`group.instance.id`): a restart with the same id
    /// within the session timeout does not rebalance.
    pub instance_id: Option<String>,
    /// The coordinator drops a member silent for this long.
    pub session_timeout: Duration,
    /// How long members have to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// Least time between two commits. Delivered offsets are committed as
    /// soon as they move, at most this often: a crash repeats at most the
    /// batches in flight plus what was delivered within one interval.
    pub commit_interval: Duration,
    /// Assignment strategy (classic protocol: the leader member assigns).
    pub assignor: Assignor,
    /// The group protocol wanted: classic, consumer (KIP-848) or auto.
    pub protocol: GroupProtocol,
    /// Under `auto`, the classic-only setting given (a flag name such as
    /// `--session-timeout-ms`), which makes `auto` choose classic: a
    /// configuration written for the classic protocol keeps it.
    pub classic_by: Option<&'static str>,
    /// Consumer protocol: the broker's assignor to use (`uniform`, `range`);
    /// `None` leaves the broker's default.
    pub server_assignor: Option<String>,
}

/// Which group protocol a member speaks.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum GroupProtocol {
    /// JoinGroup, SyncGroup and Heartbeat: the group's leader member
    /// assigns (every Kafka release).
    Classic,
    /// KIP-848 (Kafka 4.0+): `ConsumerGroupHeartbeat`, the broker assigns,
    /// incrementally, with no group-wide pause.
    Consumer,
    /// Consumer where the coordinator offers it (its ApiVersions lists
    /// `ConsumerGroupHeartbeat` and `group.version` is at least 1), else
    /// classic; classic too when a classic-only setting is given. The
    /// default.
    #[default]
    Auto,
}

impl GroupProtocol {
    /// The name in settings and logs.
    pub fn name(&self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
            GroupProtocol::Auto => "auto",
        }
    }
}

impl GroupSettings {
    /// Settings with Kafka-like defaults for `group`.
    pub fn new(group: &str) -> Self {
        Self {
            group: group.into(),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            commit_interval: Duration::ZERO,
            assignor: Assignor::Range,
            protocol: GroupProtocol::Auto,
            classic_by: None,
            server_assignor: None,
        }
    }
}
