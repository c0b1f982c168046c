//! Heartbeats on a task and a coordinator connection of their own, as
//! Kafka's Java consumer has a heartbeat thread: commits, state checkpoints
//! and stopping workers (which can take as long as a delivery) never delay
//! them, so a busy member is not dropped from the group, and a member the
//! group dropped hears it within one heartbeat interval.
//!
//! The task reports only what the membership must act on ([`Beat`]); a
//! plain success is silent.

use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::coordinator::{Coordinator, coordinator_moved};
use super::{GroupError, GroupSettings};
use crate::kafka::transport::Transport;

/// What a heartbeat said that the membership must act on.
#[derive(Debug)]
pub enum Beat {
    /// A rebalance started: commit, give up what may move, rejoin.
    /// Heartbeats go on meanwhile.
    Rebalance,
    /// This member's generation or id is gone (`ILLEGAL_GENERATION`,
    /// `UNKNOWN_MEMBER_ID`): others may own its partitions. Stop them at
    /// once, without committing, and rejoin.
    Fenced,
    /// Another process joined with this member's `group.instance.id`
    /// (`FENCED_INSTANCE_ID`): stop at once and exit.
    FencedInstance(String),
    /// No heartbeat succeeded within the session timeout: the group has
    /// dropped this member by now. Stop without committing and rejoin.
    Lost(GroupError),
}

/// Who heartbeats: one member of one generation.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Group settings (group, instance id, interval, session timeout).
    pub settings: GroupSettings,
    /// The member id the coordinator gave.
    pub member_id: String,
    /// The generation joined.
    pub generation: i32,
}

/// Where the heartbeat task finds the coordinator again when it moves.
#[derive(Debug, Clone)]
pub(crate) struct Locator {
    /// The coordinator's `host:port` at the time of the join.
    pub coordinator: Option<String>,
    /// Brokers to ask when it moved.
    pub brokers: Vec<String>,
    /// How to connect.
    pub transport: Transport,
    /// Client id of the requests.
    pub client_id: String,
    /// Timeout of each call.
    pub timeout: Duration,
}

/// The running heartbeat task of one generation; dropping it stops the
/// heartbeats (before the next join).
#[derive(Debug)]
pub struct Heartbeats {
    beats: mpsc::Receiver<Beat>,
    _task: AbortOnDropHandle<()>,
}

impl Heartbeats {
    /// Starts heartbeating as `who`, every `who.settings.heartbeat_interval`.
    pub(crate) fn start(who: Identity, at: Locator) -> Self {
        let (tx, beats) = mpsc::channel(4);
        let task = tokio::spawn(beat(who, at, tx));
        Self {
            beats,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// The next thing to act on; pending while all is well.
    pub async fn next(&mut self) -> Beat {
        match self.beats.recv().await {
            Some(b) => b,
            // The task ended after its last report: nothing more to say.
            None => std::future::pending().await,
        }
    }
}

/// The heartbeat loop: one call per interval, the coordinator looked up
/// again after it moved or the connection failed; ends after reporting a
/// fencing or a lost session.
async fn beat(who: Identity, at: Locator, tx: mpsc::Sender<Beat>) {
    let s = &who.settings;
    let mut conn = at
        .coordinator
        .clone()
        .map(|addr| Coordinator::new(addr, &at.transport, &at.client_id, at.timeout));
    let mut last_ok = Instant::now();
    let mut rebalancing = false;
    let mut tick = tokio::time::interval(s.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the join just happened
    loop {
        tick.tick().await;
        let answer = match &mut conn {
            Some(c) => {
                c.heartbeat(
                    &s.group,
                    who.generation,
                    &who.member_id,
                    s.instance_id.as_deref(),
                )
                .await
            }
            None => match Coordinator::find(
                &at.transport,
                &at.brokers,
                &s.group,
                &at.client_id,
                at.timeout,
            )
            .await
            {
                Ok((c, _)) => {
                    conn = Some(c);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        let failure = match answer {
            Ok(None) => {
                last_ok = Instant::now();
                continue;
            }
            Ok(Some(ResponseError::RebalanceInProgress)) => {
                // Still a member: the session is alive while it rejoins.
                last_ok = Instant::now();
                if !rebalancing {
                    rebalancing = true;
                    let _ = tx.send(Beat::Rebalance).await;
                }
                continue;
            }
            Ok(Some(ResponseError::IllegalGeneration | ResponseError::UnknownMemberId)) => {
                let _ = tx.send(Beat::Fenced).await;
                return;
            }
            Ok(Some(ResponseError::FencedInstanceId)) => {
                let id = s.instance_id.clone().unwrap_or_default();
                let _ = tx.send(Beat::FencedInstance(id)).await;
                return;
            }
            Ok(Some(error)) => {
                if coordinator_moved(error) {
                    conn = None;
                }
                GroupError::Broker {
                    call: ApiKey::Heartbeat,
                    error,
                }
            }
            Err(e) => {
                conn = None;
                e
            }
        };
        if last_ok.elapsed() > s.session_timeout {
            let _ = tx.send(Beat::Lost(failure)).await;
            return;
        }
        tracing::warn!(group = %s.group, error = %failure, "heartbeat failed");
    }
}
