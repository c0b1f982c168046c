//! Heartbeats on a task and a coordinator connection of their own, as
//! Kafka's Java consumer has a heartbeat thread: commits, state checkpoints
//! and stopping workers (which can take as long as a delivery) never delay
//! them, so a busy member is not dropped from the group, and a member the
//! group dropped hears it within one heartbeat interval.
//!
//! The task reports only what the membership must act on ([`Beat`]); a
//! plain success is silent. Under KIP-848's consumer protocol the same loop
//! sends `ConsumerGroupHeartbeat`s: each lists the partitions the member
//! owns now (so the broker moves on what it revoked), carries the member
//! epoch back to the member's commits, and a new assignment in an answer
//! is reported as a [`Beat::Rebalance`].

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::ApiKey;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::consumer::{self, TopicIds};
use super::coordinator::{Coordinator, coordinator_moved};
use super::{GroupError, GroupSettings};
use crate::kafka::TopicPartition;
use crate::kafka::transport::Transport;

/// What a heartbeat said that the membership must act on.
#[derive(Debug)]
pub enum Beat {
    /// A rebalance started: commit, give up what may move, rejoin.
    /// Heartbeats go on meanwhile. (Consumer protocol: the broker sent a
    /// new assignment; the rejoin reads it.)
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
    /// Under the consumer protocol: what its heartbeats share with the
    /// member.
    pub consumer: Option<ConsumerState>,
}

/// A consumer-protocol member's state its heartbeats read and update.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerState {
    /// The member epoch: the broker's answers move it on, commits use it.
    pub epoch: Arc<AtomicI32>,
    /// The partitions the member owns now (its workers' partitions).
    pub owned: Arc<Mutex<Vec<TopicPartition>>>,
    /// Ids of the subscribed topics.
    pub ids: TopicIds,
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

/// When the session of a member must have expired: the send time of its
/// last answered heartbeat plus the session timeout. Shared by the
/// heartbeat task and the member's other calls to the coordinator, which
/// give up at it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    alive: Arc<Mutex<Instant>>,
    timeout: Duration,
}

impl Session {
    fn new(timeout: Duration) -> Self {
        Self {
            alive: Arc::new(Mutex::new(Instant::now())),
            timeout,
        }
    }

    /// The moment the session must have expired.
    pub(crate) fn deadline(&self) -> Instant {
        *self.alive.lock().expect("session") + self.timeout
    }

    fn answered(&self, sent: Instant) {
        let mut alive = self.alive.lock().expect("session");
        *alive = (*alive).max(sent);
    }
}

impl Heartbeats {
    /// Starts heartbeating as `who`, every `who.settings.heartbeat_interval`;
    /// returns the task and the session it keeps alive.
    pub(crate) fn start(who: Identity, at: Locator) -> (Self, Session) {
        let (tx, beats) = mpsc::channel(4);
        let session = Session::new(who.settings.session_timeout);
        let task = tokio::spawn(beat(who, at, tx, session.clone()));
        let beats = Self {
            beats,
            _task: AbortOnDropHandle::new(task),
        };
        (beats, session)
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
async fn beat(who: Identity, at: Locator, tx: mpsc::Sender<Beat>, session: Session) {
    let s = &who.settings;
    let mut conn = at
        .coordinator
        .clone()
        .map(|addr| Coordinator::new(addr, &at.transport, &at.client_id, at.timeout));
    let mut rebalancing = false;
    let mut tick = tokio::time::interval(s.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the join just happened
    loop {
        tick.tick().await;
        // The session is judged by the session timeout: a call to a
        // coordinator that stopped answering is given up when the session
        // must have expired, not after the (longer) request timeout.
        let sent = Instant::now();
        let deadline = session.deadline();
        let call = async {
            let c = match &mut conn {
                Some(c) => c,
                None => {
                    let (c, _) = Coordinator::find(
                        &at.transport,
                        &at.brokers,
                        &s.group,
                        &at.client_id,
                        at.timeout,
                    )
                    .await?;
                    conn.insert(c)
                }
            };
            match &who.consumer {
                None => c
                    .heartbeat(
                        &s.group,
                        who.generation,
                        &who.member_id,
                        s.instance_id.as_deref(),
                    )
                    .await
                    .map(|error| (error, false)),
                Some(k) => consumer_beat(c, &who, k).await,
            }
        };
        let answered = tokio::time::timeout_at(deadline.into(), call).await;
        let answer = match answered {
            Ok(answer) => answer,
            Err(_) => {
                let broker = conn.take().map_or_else(
                    || "the group coordinator".to_string(),
                    |c| c.addr().to_owned(),
                );
                Err(GroupError::Timeout {
                    call: ApiKey::Heartbeat,
                    broker,
                    after: s.session_timeout,
                })
            }
        };
        let failure = match answer {
            // The coordinator had the heartbeat by the time it was sent at
            // the latest, so the session runs from then, not from the answer.
            Ok((None, reassigned)) => {
                session.answered(sent);
                if reassigned && !rebalancing {
                    rebalancing = true;
                    let _ = tx.send(Beat::Rebalance).await;
                }
                continue;
            }
            Ok((Some(ResponseError::RebalanceInProgress), _)) => {
                // Still a member: the session is alive while it rejoins.
                session.answered(sent);
                if !rebalancing {
                    rebalancing = true;
                    let _ = tx.send(Beat::Rebalance).await;
                }
                continue;
            }
            Ok((
                Some(
                    ResponseError::IllegalGeneration
                    | ResponseError::UnknownMemberId
                    | ResponseError::FencedMemberEpoch,
                ),
                _,
            )) => {
                let _ = tx.send(Beat::Fenced).await;
                return;
            }
            Ok((Some(ResponseError::FencedInstanceId), _)) => {
                let id = s.instance_id.clone().unwrap_or_default();
                let _ = tx.send(Beat::FencedInstance(id)).await;
                return;
            }
            Ok((Some(error), _)) => {
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
        if Instant::now() >= session.deadline() {
            let _ = tx.send(Beat::Lost(failure)).await;
            return;
        }
        tracing::warn!(group = %s.group, error = %failure, "heartbeat failed");
    }
}

/// One consumer-protocol heartbeat: the member's owned partitions sent,
/// the epoch taken from the answer; true with it when the answer carries
/// an assignment other than what the member owns.
async fn consumer_beat(
    c: &mut Coordinator,
    who: &Identity,
    k: &ConsumerState,
) -> Result<(Option<ResponseError>, bool), GroupError> {
    let owned = k.owned.lock().expect("owned").clone();
    let req = consumer::heartbeat(
        &who.settings.group,
        &who.member_id,
        k.epoch.load(Ordering::Relaxed),
        None,
        Some((&k.ids, &owned)),
    );
    let resp = consumer::send(c, req).await?;
    if let Some(error) = resp.error_code.err() {
        return Ok((Some(error), false));
    }
    k.epoch.store(resp.member_epoch, Ordering::Relaxed);
    let reassigned = resp
        .assignment
        .as_ref()
        .is_some_and(|a| k.ids.assigned(a).map_or(true, |now| now != owned));
    Ok((None, reassigned))
}
