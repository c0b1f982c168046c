//! Reading as a member of a share group (`--share-group`, KIP-932): the
//! broker hands each record to one member at a time, so several processes
//! share even one partition's work. The data path is the same as a
//! partition worker's, fetch -> stages -> sink, with acknowledgements in
//! place of committed offsets:
//!
//! - the heartbeat loop ([`run`]) keeps the membership and maps the
//!   assignment (topic ids) to each partition's leader;
//! - one task per leader broker ([`lead`]) fetches in a share session
//!   (`ShareFetch`), runs the chain over the records acquired for this
//!   member, delivers the outputs and dead letters, and acknowledges each
//!   record with the next fetch: ACCEPT once delivered (kept, appended,
//!   replaced, routed or dropped), REJECT once its dead letter is written
//!   (a `fail` verdict, undecodable), RELEASE when its stage failed (trap,
//!   time or memory limit) so that it is delivered again, until the
//!   group's delivery limit: then it is dead-lettered and rejected.
//!
//! The delivery count reaches the stages as the record header
//! `pipeline.delivery.count`, and the metrics as
//! `pipeline_share_redelivered_total`. A crash before an acknowledgement
//! delivers the record again (to any member) once its lock expires:
//! at-least-once, the only guarantee a share group offers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kafka_protocol::error::ParseResponseErrorCode;
use rskafka::record::RecordAndOffset;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::worker::{count_delivered, transform};
use super::{Pipeline, PipelineError, Shared};
use crate::backoff::Backoff;
use crate::group::share::{
    Ack, Acks, DEFAULT_DELIVERY_LIMIT, ShareMember, SharePartition, ShareSession,
};
use crate::kafka::{ErrorName, TopicPartition};
use crate::shutdown::CancellationToken;
use crate::source::StartFrom;
use crate::stages::{Chain, ChainOutput};

/// Header carrying a share group record's delivery count (1 the first
/// time) to the stages and the outputs.
pub const DELIVERY_COUNT: &str = "pipeline.delivery.count";

/// The partitions a leader task fetches: (topic id, partition).
type Parts = Vec<(Uuid, TopicPartition)>;

/// Runs the pipeline as a member of share group `group` reading `topics`
/// until `stop`.
pub(super) async fn run(
    pipeline: &Pipeline,
    shared: &Arc<Shared>,
    group: &str,
    topics: BTreeMap<String, i32>,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    let cfg = &shared.config;
    let mut member = ShareMember::new(group, &cfg.kafka, topics.keys().cloned().collect());
    let start = match cfg.start {
        StartFrom::Earliest => "earliest",
        StartFrom::Latest => "latest",
    };
    // Group configs, before joining: where the group starts, and after how
    // many deliveries the broker gives a record up. A broker still
    // starting answers with retriable errors for a few seconds.
    let mut backoff = Backoff::broker();
    let mut set = Err(crate::group::GroupError::NoBootstrap);
    let mut limit = Ok(None);
    for _ in 0..10 {
        if set.is_err() {
            set = member.set_start(start).await;
        }
        if !matches!(limit, Ok(Some(_))) {
            limit = member.delivery_limit().await;
        }
        if set.is_ok() && matches!(limit, Ok(Some(_))) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
    if let Err(e) = set {
        tracing::warn!(group, start, error = %e, "cannot set the share group's share.auto.offset.reset; it starts where the group's configuration says (Kafka's default: latest)");
    }
    let limit = match limit {
        Ok(Some(l)) => l,
        other => {
            tracing::warn!(group, limit = DEFAULT_DELIVERY_LIMIT, error = ?other.err().map(|e| e.to_string()), "cannot read the share group's share.delivery.count.limit; assuming Kafka's default");
            DEFAULT_DELIVERY_LIMIT
        }
    };
    tracing::info!(
        group,
        member = member.member_id(),
        delivery_limit = limit,
        start,
        "joining the share group"
    );
    let refresh = Arc::new(Notify::new());
    let mut leaders: BTreeMap<String, (watch::Sender<Parts>, JoinHandle<()>)> = BTreeMap::new();
    let mut assigned: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
    backoff.reset();
    let mut metadata = tokio::time::interval(cfg.metadata_refresh);
    metadata.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_beat = tokio::time::Instant::now();
    shared.metrics.ready.store(true, Ordering::Relaxed);
    loop {
        let remap = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next_beat) => {
                match member.heartbeat().await {
                    Ok(given) => {
                        backoff.reset();
                        next_beat = tokio::time::Instant::now() + member.interval();
                        match given {
                            Some(a) if a != assigned => {
                                tracing::info!(group, member = member.member_id(), assignment = ?a.iter().map(|(t, p)| (t.to_string(), p.clone())).collect::<Vec<_>>(), "share group assignment");
                                shared.metrics.rebalances.fetch_add(1, Ordering::Relaxed);
                                assigned = a;
                                true
                            }
                            _ => false,
                        }
                    }
                    Err(e) => {
                        if matches!(e.broker_error(), Some(
                            kafka_protocol::ResponseError::GroupAuthorizationFailed
                            | kafka_protocol::ResponseError::TopicAuthorizationFailed
                            | kafka_protocol::ResponseError::UnsupportedVersion
                            | kafka_protocol::ResponseError::InvalidRequest
                            | kafka_protocol::ResponseError::GroupIdNotFound
                        )) {
                            retire(&mut leaders, |_| true).await;
                            return Err(share_refused(group, e).into());
                        }
                        let delay = backoff.next_delay();
                        tracing::warn!(group, error = %e, retry_in = ?delay, "share group heartbeat failed; retrying");
                        next_beat = tokio::time::Instant::now() + delay;
                        false
                    }
                }
            }
            _ = metadata.tick() => true,
            _ = refresh.notified() => true,
        };
        if !remap {
            continue;
        }
        match member.leaders(&assigned).await {
            Ok(by_leader) => {
                for (addr, parts) in &by_leader {
                    match leaders.get(addr) {
                        Some((tx, _)) => {
                            tx.send_if_modified(|old| {
                                let changed = old != parts;
                                *old = parts.clone();
                                changed
                            });
                        }
                        None => {
                            let (tx, rx) = watch::channel(parts.clone());
                            let task = tokio::spawn(lead(
                                shared.clone(),
                                pipeline.chain()?,
                                addr.clone(),
                                (group.to_owned(), member.member_id().to_owned()),
                                rx,
                                limit,
                                refresh.clone(),
                                stop.clone(),
                            ));
                            leaders.insert(addr.clone(), (tx, task));
                        }
                    }
                }
                // Leaders with nothing left acknowledge what they hold and
                // close their sessions.
                retire(&mut leaders, |addr| !by_leader.contains_key(addr)).await;
            }
            Err(e) => {
                tracing::warn!(group, error = %e, "cannot find the leaders of the assigned partitions; trying again at the next metadata refresh");
            }
        }
    }
    retire(&mut leaders, |_| true).await;
    member.leave().await;
    Ok(())
}

/// A refusal of the share group for good, with what to do.
fn share_refused(group: &str, e: crate::group::GroupError) -> crate::config::ConfigError {
    crate::config::ConfigError::Invalid(format!(
        "share group {group}: {e}; share groups need Kafka 4.1 or later with the share.version feature enabled (on by default from 4.2), and READ on the group and its topics"
    ))
}

/// Tells the leader tasks whose address is `gone` to finish (acknowledge
/// and close their sessions) and waits for them.
async fn retire(
    leaders: &mut BTreeMap<String, (watch::Sender<Parts>, JoinHandle<()>)>,
    gone: impl Fn(&str) -> bool,
) {
    for (_, (tx, task)) in leaders.extract_if(.., |addr, _| gone(addr)) {
        let _ = tx.send(Vec::new());
        let _ = task.await;
    }
}

/// One leader broker's share session: fetch, process, deliver and
/// acknowledge its assigned partitions until they are taken away or the
/// pipeline stops; then the last acknowledgements close the session.
#[allow(clippy::too_many_arguments)]
async fn lead(
    shared: Arc<Shared>,
    mut chain: Chain,
    addr: String,
    (group, member_id): (String, String),
    mut parts: watch::Receiver<Parts>,
    limit: i16,
    refresh: Arc<Notify>,
    stop: CancellationToken,
) {
    let cfg = &shared.config;
    let mut session = ShareSession::new(addr.clone(), &cfg.kafka, &group, &member_id);
    let mut acks = Acks::default();
    let mut backoff = Backoff::broker();
    let mut ids: BTreeMap<TopicPartition, Uuid> = BTreeMap::new();
    loop {
        let current = parts.borrow_and_update().clone();
        if current.is_empty() || stop.is_cancelled() || shared.stop.is_cancelled() {
            break;
        }
        ids.extend(current.iter().map(|(id, tp)| (tp.clone(), *id)));
        // A fetch is never cancelled: it may carry acknowledgements.
        let fetched = session
            .fetch(
                &current,
                &mut acks,
                cfg.fetch.max_wait,
                cfg.max_batch_records as i32,
                cfg.fetch.max_bytes,
            )
            .await;
        let fetched = match fetched {
            Ok(f) => {
                backoff.reset();
                f
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(broker = %addr, error = %e, retry_in = ?delay, "share fetch failed; retrying (records this member held are delivered again once their locks expire)");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => {}
                }
                continue;
            }
        };
        for p in fetched {
            if let Some(error) = p.error.err() {
                tracing::warn!(topic = %p.tp.topic, partition = p.tp.partition, broker = %addr, error = %ErrorName(error), "share fetch of a partition failed; looking up its leader again");
                refresh.notify_one();
                continue;
            }
            if let Some(error) = p.ack_error.err() {
                tracing::warn!(topic = %p.tp.topic, partition = p.tp.partition, error = %ErrorName(error), "the broker refused acknowledgements; those records are delivered again");
            }
            if p.acquired.is_empty() {
                continue;
            }
            if !process(&shared, &mut chain, p, limit, &mut acks, &stop).await {
                break;
            }
        }
    }
    if let Err(e) = session.close(&ids, &mut acks).await {
        tracing::warn!(broker = %addr, error = %e, "could not send the last acknowledgements; those records are delivered again once their locks expire");
    }
}

/// Runs one partition's acquired records through the stages and the sink
/// and queues their acknowledgements; false when the pipeline stops.
async fn process(
    shared: &Arc<Shared>,
    chain: &mut Chain,
    p: SharePartition,
    limit: i16,
    acks: &mut Acks,
    stop: &CancellationToken,
) -> bool {
    let metrics = &shared.metrics;
    let tp = p.tp.clone();
    let (records, undecodable) = match &p.records {
        Some(data) => match rskafka::client::partition::decode_record_data(data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot read a share fetch's records; releasing them");
                release_all(acks, &p);
                return true;
            }
        },
        None => (Vec::new(), Vec::new()),
    };
    let count_of = |offset: i64| {
        p.acquired
            .iter()
            .find(|(f, l, _)| (*f..=*l).contains(&offset))
            .map(|a| a.2)
    };
    // Only the acquired records are this member's; a batch may hold others.
    let mut mine: Vec<RecordAndOffset> = Vec::new();
    for mut r in records {
        let Some(count) = count_of(r.offset) else {
            continue;
        };
        if count > 1 {
            metrics.share_redelivered.fetch_add(1, Ordering::Relaxed);
        }
        r.record.headers.push(DELIVERY_COUNT, count.to_string());
        mine.push(r);
    }
    let undecodable: Vec<_> = undecodable
        .into_iter()
        .filter(|u| (u.first_offset..=u.last_offset).any(|o| count_of(o).is_some()))
        .collect();
    let rejected: Vec<(i64, i64)> = undecodable
        .iter()
        .map(|u| (u.first_offset, u.last_offset))
        .collect();
    let Some((records, mut out)) = transform(shared, chain, &tp, (mine, undecodable), stop).await
    else {
        // Stopped: what this member holds goes back to the group now.
        release_all(acks, &p);
        return false;
    };
    let released = release_or_limit(&records, &mut out, count_of, limit);
    match shared
        .sink
        .deliver(&tp.topic, tp.partition, &records, &out)
        .await
    {
        Ok(d) => count_delivered(shared, &tp, &records, d),
        Err(e) => {
            tracing::error!(topic = %tp.topic, partition = tp.partition, error = %e, "stopping the pipeline: a refused record has nowhere to go; its records are delivered again once their locks expire");
            shared.fail(e.into());
            return false;
        }
    }
    // The acknowledgements, by offset: what was rejected or released,
    // else accepted; acquired offsets without a record are gaps.
    let mut by_offset: BTreeMap<i64, Ack> = BTreeMap::new();
    for d in &out.dead {
        by_offset.insert(records[d.input].offset, Ack::Reject);
    }
    for &(first, last) in &rejected {
        for o in first..=last {
            by_offset.insert(o, Ack::Reject);
        }
    }
    for &o in &released {
        by_offset.insert(o, Ack::Release);
    }
    for r in &records {
        by_offset.entry(r.offset).or_insert(Ack::Accept);
    }
    for &(first, last, _) in &p.acquired {
        for o in first..=last {
            let ack = *by_offset.get(&o).unwrap_or(&Ack::Gap);
            metrics.share_acks[ack as usize].fetch_add(1, Ordering::Relaxed);
            acks.add(&tp, o, ack);
        }
    }
    chain.recycle(std::mem::take(&mut out.output));
    true
}

/// Releases every record acquired in `p`: they go back to the group now
/// instead of when their locks expire.
fn release_all(acks: &mut Acks, p: &SharePartition) {
    for &(first, last, _) in &p.acquired {
        for o in first..=last {
            acks.add(&p.tp, o, Ack::Release);
        }
    }
}

/// Dead letters of a failed stage (not of a verdict) are released for
/// another delivery while their delivery count (`count_of` their offset)
/// is under `limit`: they are taken out of `out.dead` and their offsets
/// returned. At the limit they stay dead letters, their reason saying so.
fn release_or_limit(
    records: &[RecordAndOffset],
    out: &mut ChainOutput,
    count_of: impl Fn(i64) -> Option<i16>,
    limit: i16,
) -> Vec<i64> {
    let mut released = Vec::new();
    out.dead.retain_mut(|d| {
        if !d.stage_error {
            return true;
        }
        let offset = records[d.input].offset;
        let count = count_of(offset).unwrap_or(1);
        if count < limit {
            released.push(offset);
            return false;
        }
        d.reason = format!(
            "{} (delivery {count}: the share group's delivery limit is {limit})",
            d.reason
        );
        true
    });
    released
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::DeadLetter;

    fn record(offset: i64) -> RecordAndOffset {
        RecordAndOffset {
            record: rskafka::record::Record {
                key: None,
                value: Some(b"{}".to_vec()),
                headers: Default::default(),
                timestamp: rskafka::chrono::Utc::now(),
            },
            offset,
        }
    }

    #[test]
    fn failed_stages_release_until_the_limit_and_verdicts_stay_dead_letters() {
        let records = [record(10), record(11), record(12)];
        let dead = |input, stage_error| DeadLetter {
            input,
            stage: "s".into(),
            reason: "trapped".into(),
            stage_error,
        };
        let mut out = ChainOutput {
            dead: vec![dead(0, true), dead(1, false), dead(2, true)],
            ..ChainOutput::default()
        };
        let counts = BTreeMap::from([(10, 1), (11, 1), (12, 5)]);
        let released = release_or_limit(&records, &mut out, |o| counts.get(&o).copied(), 5);
        assert_eq!(released, [10]);
        assert_eq!(out.dead.len(), 2);
        assert_eq!(out.dead[0].reason, "trapped");
        assert_eq!(
            out.dead[1].reason,
            "trapped (delivery 5: the share group's delivery limit is 5)"
        );
    }
}
