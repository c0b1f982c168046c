//! `pipeline-host group describe|reset`: the operator's view of a consumer
//! group, like Kafka's `kafka-consumer-groups.sh`. `describe` prints the
//! members, their partitions, and per partition of every topic the group
//! reads (or those given) the committed offset, the end offset and the
//! lag, with the lag per topic. `reset` moves the committed offsets (to the
//! earliest or latest offset, to a timestamp, or to an explicit offset) and
//! is refused while the group has members.
//!
//! Share groups (KIP-932) are described too: their members with epochs,
//! several owners per partition, and per partition the share-partition
//! start offset (below it every record is acknowledged) in place of the
//! committed offset. Their lag is not shown: records past the start offset
//! may be acknowledged already, and the call that reports it
//! (DescribeShareGroupOffsets v1) is not in `kafka-protocol` 0.18.

use std::collections::BTreeMap;

use rskafka::chrono::DateTime;
use rskafka::client::partition::OffsetAt;

use super::CmdError;
use crate::config::KafkaArgs;
use crate::config::StringOrList;
use crate::group::GroupError;
use crate::group::assignor::decode_assignment;
use crate::group::coordinator::{Coordinator, GroupDescription, coordinator_moved};
use crate::kafka::{Kafka, KafkaError, TopicPartition, timed};

/// `pipeline-host group`: describe a group, reset its offsets.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum GroupCommand {
    /// Members, assignment, committed offsets and lag per partition.
    Describe(GroupTarget),
    /// Move the group's committed offsets; refused while it has members.
    Reset {
        /// The group.
        #[command(flatten)]
        target: GroupTarget,
        /// earliest, latest, timestamp:MILLIS or offset:N.
        #[arg(long)]
        to: ResetTo,
    },
}

/// Which group, on which brokers and input topic.
#[derive(Debug, Clone, clap::Args)]
pub struct GroupTarget {
    /// The brokers.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Group id.
    #[arg(long)]
    pub group: String,
    /// Input topics of the group, comma-separated (default: every topic
    /// its members are assigned or it has committed offsets for; `reset`
    /// needs them named).
    #[arg(long)]
    pub topic: Option<StringOrList>,
}

impl GroupTarget {
    /// The topics named with `--topic`.
    fn topics(&self) -> Vec<String> {
        self.topic
            .as_ref()
            .map(StringOrList::to_vec)
            .unwrap_or_default()
    }
}

/// Runs the subcommand: prints the description, or the offsets set.
pub async fn exec(cmd: GroupCommand) -> Result<(), CmdError> {
    match cmd {
        GroupCommand::Describe(t) => {
            let settings = t.kafka.settings()?;
            let kafka = Kafka::connect(settings.clone()).await?;
            let (d, rows) = describe(&kafka, &settings.bootstrap, &t.group, &t.topics()).await?;
            print!("{}", describe_table(&t.group, &d, &rows));
        }
        GroupCommand::Reset { target: t, to } => {
            let settings = t.kafka.settings()?;
            let kafka = Kafka::connect(settings.clone()).await?;
            let topics = t.topics();
            if topics.is_empty() {
                return Err(CmdError::Usage(
                    "group reset needs the topics whose offsets move (--topic a,b)".into(),
                ));
            }
            let offsets = reset(&kafka, &settings.bootstrap, &t.group, &topics, &to).await?;
            for (tp, o) in offsets {
                println!(
                    "{} partition {}: committed offset set to {o}",
                    tp.topic, tp.partition
                );
            }
        }
    }
    Ok(())
}

/// Errors of the group tools.
#[derive(Debug, thiserror::Error)]
pub enum GroupToolError {
    /// Kafka data calls failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Group calls failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// Share groups keep share-partition start offsets, not committed
    /// offsets: `reset` does not move them.
    #[error(
        "group {0} is a share group: its start offsets are reset with Kafka's kafka-share-groups.sh --reset-offsets, not with group reset"
    )]
    ShareGroupReset(String),
    /// The group has members: resetting would race with them.
    #[error(
        "group {group} has {members} active member(s) (state {state}); stop them before resetting its offsets"
    )]
    Active {
        /// Group.
        group: String,
        /// Member count.
        members: usize,
        /// Group state.
        state: String,
    },
}

/// Where `reset` moves the offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTo {
    /// The oldest offset in the log.
    Earliest,
    /// The end of the log (skip everything there now).
    Latest,
    /// The first offset at or after this time (milliseconds since the epoch).
    Timestamp(i64),
    /// This offset in every partition.
    Offset(i64),
}

impl std::str::FromStr for ResetTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => {
                if let Some(t) = s.strip_prefix("timestamp:") {
                    t.parse()
                        .map(Self::Timestamp)
                        .map_err(|e| format!("timestamp: {e}"))
                } else if let Some(o) = s.strip_prefix("offset:") {
                    o.parse()
                        .map(Self::Offset)
                        .map_err(|e| format!("offset: {e}"))
                } else {
                    Err("expected earliest, latest, timestamp:MILLIS or offset:N".into())
                }
            }
        }
    }
}

/// One partition's row of `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionRow {
    /// Topic and partition.
    pub partition: TopicPartition,
    /// Committed offset (a share group's start offset), if any.
    pub committed: Option<i64>,
    /// End offset of the log.
    pub end: i64,
    /// `end - committed` (or the whole log when nothing is committed);
    /// `None` for a share group, whose records past the start offset may
    /// be acknowledged already: Kafka reports its lag with
    /// DescribeShareGroupOffsets v1, which `kafka-protocol` 0.18 lacks.
    pub lag: Option<i64>,
    /// Member owning it, if any.
    pub owner: Option<String>,
}

async fn end_offsets(
    kafka: &Kafka,
    topic: &str,
    at: impl Fn() -> OffsetAt,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let partitions = kafka.ensure_topic(topic, None).await?;
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let client = kafka.partition(topic, p).await?;
        let o = timed(
            || format!("listing offsets of {topic}/{p}"),
            kafka.request_timeout(),
            client.get_offset(at()),
        )
        .await?;
        out.insert(p, o);
    }
    Ok(out)
}

/// A coordinator connection for the admin tools and the group as it
/// describes it. While the coordinator is loading, moving or not there yet
/// (Apache Kafka creates its offsets topic on the first look-up), it asks
/// again for up to the request timeout.
async fn coordinator(
    kafka: &Kafka,
    bootstrap: &[String],
    group: &str,
) -> Result<(Coordinator, GroupDescription), GroupError> {
    let deadline = tokio::time::Instant::now() + kafka.request_timeout();
    let mut backoff = crate::backoff::Backoff::broker();
    loop {
        let found = async {
            let (mut coordinator, _) = Coordinator::find(
                &kafka.settings().transport,
                bootstrap,
                group,
                "pipeline-host-admin",
                kafka.request_timeout(),
            )
            .await?;
            let description = coordinator.describe(group).await?;
            Ok((coordinator, description))
        };
        match found.await {
            Err(GroupError::Broker { error, .. })
                if coordinator_moved(error) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            done => return done,
        }
    }
}

/// Describes `group` on `topics` (none: every topic its members are
/// assigned or it has committed offsets for).
pub(crate) async fn describe(
    kafka: &Kafka,
    bootstrap: &[String],
    group: &str,
    topics: &[String],
) -> Result<(GroupDescription, Vec<PartitionRow>), GroupToolError> {
    let (mut coord, description) = coordinator(kafka, bootstrap, group).await?;
    // A share group's partitions may have several owners.
    let mut owners: BTreeMap<TopicPartition, Vec<String>> = BTreeMap::new();
    for m in &description.members {
        for tp in decode_assignment(&m.assignment) {
            owners
                .entry(tp)
                .or_default()
                .push(m.instance_id.clone().unwrap_or_else(|| m.member_id.clone()));
        }
    }
    let share = description.share;
    let mut topics: std::collections::BTreeSet<String> = topics.iter().cloned().collect();
    if topics.is_empty() {
        topics.extend(owners.keys().map(|tp| tp.topic.to_string()));
        topics.extend(
            offsets(&mut coord, share, group, &[])
                .await?
                .into_iter()
                .map(|(tp, _)| tp.topic.to_string()),
        );
    }
    let mut rows = Vec::new();
    for topic in &topics {
        let ends = end_offsets(kafka, topic, || OffsetAt::Latest).await?;
        let partitions: Vec<TopicPartition> = ends
            .keys()
            .map(|p| TopicPartition::new(topic.as_str(), *p))
            .collect();
        let committed: BTreeMap<TopicPartition, Option<i64>> =
            offsets(&mut coord, share, group, &partitions)
                .await?
                .into_iter()
                .collect();
        rows.extend(partitions.into_iter().map(|tp| {
            let c = committed.get(&tp).copied().flatten();
            let end = ends[&tp.partition];
            PartitionRow {
                committed: c,
                end,
                lag: (!share).then(|| end - c.unwrap_or(0)),
                owner: owners.get(&tp).map(|o| o.join(",")),
                partition: tp,
            }
        }));
    }
    Ok((description, rows))
}

/// The group's offsets on `partitions` (none: all it has): committed
/// offsets, or a share group's share-partition start offsets.
async fn offsets(
    coord: &mut Coordinator,
    share: bool,
    group: &str,
    partitions: &[TopicPartition],
) -> Result<Vec<(TopicPartition, Option<i64>)>, GroupError> {
    if share {
        coord.share_offsets(group, partitions).await
    } else {
        coord.fetch_offsets(group, partitions).await
    }
}

/// The `describe` output.
pub(crate) fn describe_table(group: &str, d: &GroupDescription, rows: &[PartitionRow]) -> String {
    let mut s = format!(
        "group {group}  state {}  protocol {}  members {}\n",
        d.state,
        d.protocol,
        d.members.len()
    );
    for m in &d.members {
        s.push_str(&format!(
            "  member {}{}{}  client {}  host {}\n",
            m.member_id,
            m.instance_id
                .as_ref()
                .map(|i| format!(" (instance {i})"))
                .unwrap_or_default(),
            m.epoch.map(|e| format!("  epoch {e}")).unwrap_or_default(),
            m.client_id,
            m.host
        ));
    }
    // A share group's offset is where its unacknowledged records start.
    let offset = if d.share { "start" } else { "committed" };
    s.push_str(&format!(
        "{:<24} {:>9} {:>12} {:>12} {:>10}  owner\n",
        "topic", "partition", offset, "end", "lag"
    ));
    let mut lags: BTreeMap<&str, i64> = BTreeMap::new();
    let known = |o: Option<i64>| o.map_or("-".to_string(), |v| v.to_string());
    for r in rows {
        if let Some(lag) = r.lag {
            *lags.entry(&r.partition.topic).or_default() += lag;
        }
        s.push_str(&format!(
            "{:<24} {:>9} {:>12} {:>12} {:>10}  {}\n",
            r.partition.topic,
            r.partition.partition,
            known(r.committed),
            r.end,
            known(r.lag),
            r.owner.as_deref().unwrap_or("-")
        ));
    }
    if d.share {
        return s;
    }
    if lags.len() > 1 {
        for (topic, lag) in &lags {
            s.push_str(&format!("topic {topic} lag {lag}\n"));
        }
    }
    s.push_str(&format!("total lag {}\n", lags.values().sum::<i64>()));
    s
}

/// Resets the committed offsets of `group` on `topics`; returns the new
/// offsets. Refused while the group has members.
pub(crate) async fn reset(
    kafka: &Kafka,
    bootstrap: &[String],
    group: &str,
    topics: &[String],
    to: &ResetTo,
) -> Result<Vec<(TopicPartition, i64)>, GroupToolError> {
    let (mut coord, d) = coordinator(kafka, bootstrap, group).await?;
    if d.share {
        return Err(GroupToolError::ShareGroupReset(group.into()));
    }
    if !d.members.is_empty() {
        return Err(GroupToolError::Active {
            group: group.into(),
            members: d.members.len(),
            state: d.state,
        });
    }
    let mut all = Vec::new();
    for topic in topics {
        let offsets: BTreeMap<i32, i64> = match to {
            ResetTo::Earliest => end_offsets(kafka, topic, || OffsetAt::Earliest).await?,
            ResetTo::Latest => end_offsets(kafka, topic, || OffsetAt::Latest).await?,
            ResetTo::Timestamp(ms) => {
                let at = DateTime::from_timestamp_millis(*ms).unwrap_or_default();
                end_offsets(kafka, topic, || OffsetAt::Timestamp(at)).await?
            }
            ResetTo::Offset(o) => end_offsets(kafka, topic, || OffsetAt::Latest)
                .await?
                .into_iter()
                .map(|(p, end)| (p, (*o).min(end)))
                .collect(),
        };
        all.extend(
            offsets
                .into_iter()
                .map(|(p, o)| (TopicPartition::new(topic.as_str(), p), o)),
        );
    }
    coord.commit(group, -1, "", None, &all, 7).await?;
    Ok(all)
}
