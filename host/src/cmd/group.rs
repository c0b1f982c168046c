//! `pipeline-host group describe|reset`: the operator's view of a consumer
//! group, like Kafka's `kafka-consumer-groups.sh`. `describe` prints the
//! members, their partitions, and per partition the committed offset, the
//! end offset and the lag. `reset` moves the committed offsets (to the
//! earliest or latest offset, to a timestamp, or to an explicit offset) and
//! is refused while the group has members.

use std::collections::BTreeMap;

use rskafka::chrono::DateTime;
use rskafka::client::partition::OffsetAt;

use super::CmdError;
use crate::config::KafkaArgs;
use crate::group::GroupError;
use crate::group::assignor::decode_assignment;
use crate::group::coordinator::{Coordinator, GroupDescription, coordinator_moved};
use crate::kafka::{Kafka, KafkaError, timed};

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
    /// Input topic of the group.
    #[arg(long, default_value = "user-login")]
    pub topic: String,
}

/// Runs the subcommand: prints the description, or the offsets set.
pub async fn exec(cmd: GroupCommand) -> Result<(), CmdError> {
    match cmd {
        GroupCommand::Describe(t) => {
            let settings = t.kafka.settings()?;
            let kafka = Kafka::connect(settings.clone()).await?;
            let (d, rows) = describe(&kafka, &settings.bootstrap, &t.group, &t.topic).await?;
            print!("{}", describe_table(&t.group, &t.topic, &d, &rows));
        }
        GroupCommand::Reset { target: t, to } => {
            let settings = t.kafka.settings()?;
            let kafka = Kafka::connect(settings.clone()).await?;
            let offsets = reset(&kafka, &settings.bootstrap, &t.group, &t.topic, &to).await?;
            for (p, o) in offsets {
                println!("{} partition {p}: committed offset set to {o}", t.topic);
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
    /// Partition.
    pub partition: i32,
    /// Committed offset, if any.
    pub committed: Option<i64>,
    /// End offset of the log.
    pub end: i64,
    /// `end - committed` (or the whole log when nothing is committed).
    pub lag: i64,
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

/// Describes `group` for `topic`.
pub(crate) async fn describe(
    kafka: &Kafka,
    bootstrap: &[String],
    group: &str,
    topic: &str,
) -> Result<(GroupDescription, Vec<PartitionRow>), GroupToolError> {
    let (mut coord, description) = coordinator(kafka, bootstrap, group).await?;
    let ends = end_offsets(kafka, topic, || OffsetAt::Latest).await?;
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let committed: BTreeMap<i32, Option<i64>> = coord
        .fetch_offsets(group, topic, &partitions)
        .await?
        .into_iter()
        .collect();
    let mut owners = BTreeMap::new();
    for m in &description.members {
        for p in decode_assignment(topic, &m.assignment) {
            owners.insert(
                p,
                m.instance_id.clone().unwrap_or_else(|| m.member_id.clone()),
            );
        }
    }
    let rows = ends
        .iter()
        .map(|(p, end)| {
            let c = committed.get(p).copied().flatten();
            PartitionRow {
                partition: *p,
                committed: c,
                end: *end,
                lag: end - c.unwrap_or(0),
                owner: owners.get(p).cloned(),
            }
        })
        .collect();
    Ok((description, rows))
}

/// The `describe` output.
pub(crate) fn describe_table(
    group: &str,
    topic: &str,
    d: &GroupDescription,
    rows: &[PartitionRow],
) -> String {
    let mut s = format!(
        "group {group}  state {}  protocol {}  members {}\n",
        d.state,
        d.protocol,
        d.members.len()
    );
    for m in &d.members {
        s.push_str(&format!(
            "  member {}{}  client {}  host {}\n",
            m.member_id,
            m.instance_id
                .as_ref()
                .map(|i| format!(" (instance {i})"))
                .unwrap_or_default(),
            m.client_id,
            m.host
        ));
    }
    s.push_str(&format!(
        "{:<24} {:>9} {:>12} {:>12} {:>10}  owner\n",
        "topic", "partition", "committed", "end", "lag"
    ));
    for r in rows {
        s.push_str(&format!(
            "{topic:<24} {:>9} {:>12} {:>12} {:>10}  {}\n",
            r.partition,
            r.committed.map_or("-".to_string(), |c| c.to_string()),
            r.end,
            r.lag,
            r.owner.as_deref().unwrap_or("-")
        ));
    }
    s.push_str(&format!(
        "total lag {}\n",
        rows.iter().map(|r| r.lag).sum::<i64>()
    ));
    s
}

/// Resets the committed offsets of `group` on `topic`; returns the new
/// offsets. Refused while the group has members.
pub(crate) async fn reset(
    kafka: &Kafka,
    bootstrap: &[String],
    group: &str,
    topic: &str,
    to: &ResetTo,
) -> Result<Vec<(i32, i64)>, GroupToolError> {
    let (mut coord, d) = coordinator(kafka, bootstrap, group).await?;
    if !d.members.is_empty() {
        return Err(GroupToolError::Active {
            group: group.into(),
            members: d.members.len(),
            state: d.state,
        });
    }
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
    let offsets: Vec<(i32, i64)> = offsets.into_iter().collect();
    coord.commit(group, -1, "", None, topic, &offsets).await?;
    Ok(offsets)
}
