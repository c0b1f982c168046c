//! Consumer groups and committed offsets, which `rskafka` lacks: several
//! `pipeline-host` processes with the same `--group` split the input
//! partitions (classic protocol: JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and commit, per partition, the offset below which every
//! record is delivered.
//!
//! - [`coordinator`]: the connection and the group/offset calls.
//! - [`assignor`]: range and cooperative-sticky assignment, metadata blobs.
//! - [`member`]: one member's state: join with the member-id retry, sync,
//!   heartbeat, commit with the current generation, leave.
//!
//! The pipeline (`pipeline.rs`) drives a [`member::Member`]: it starts
//! partition workers for what it is assigned, and before it rejoins it stops
//! the workers of partitions it may lose, waits for their deliveries, and
//! commits. It never commits after the coordinator said its generation is
//! stale, and stops producing for partitions as soon as it may have lost
//! them (fencing is the host's job; brokers have been seen accepting stale
//! commits).

pub mod assignor;
pub mod coordinator;
pub mod member;

use std::time::Duration;

pub use assignor::Assignor;

/// Errors of the group layer.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No bootstrap broker was given.
    #[error("no bootstrap broker to ask for the group coordinator")]
    NoBootstrap,
    /// A network error on the coordinator connection.
    #[error("{call} to {broker} failed: {error}")]
    Io {
        /// The API.
        call: &'static str,
        /// The broker.
        broker: String,
        /// What happened.
        error: String,
    },
    /// A call did not answer in time.
    #[error("{call} to {broker} timed out after {after:?}")]
    Timeout {
        /// The API.
        call: &'static str,
        /// The broker.
        broker: String,
        /// The timeout.
        after: Duration,
    },
    /// A request could not be encoded or a response decoded.
    #[error("{call}: protocol error: {error}")]
    Codec {
        /// The API.
        call: &'static str,
        /// What went wrong.
        error: String,
    },
    /// The broker answered with an error code.
    #[error("{call} failed with Kafka error code {code}")]
    Broker {
        /// The API.
        call: &'static str,
        /// Kafka's error code.
        code: i16,
    },
    /// Another process uses this static member's instance id.
    #[error(
        "another member uses group instance id {0}; give each process its own --group-instance-id"
    )]
    FencedInstance(String),
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
    /// Assignment strategy.
    pub assignor: Assignor,
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
        }
    }
}
