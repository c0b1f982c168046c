//! The identity of an input partition: its topic and its number. With
//! several input topics a partition number alone names nothing, so every
//! map keyed by an input partition (delivered offsets, workers,
//! checkpoints, assignments, commits) is keyed by this.

use std::fmt;
use std::sync::Arc;

/// One partition of one topic; cheap to clone (the name is shared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// The topic's name.
    pub topic: Arc<str>,
    /// The partition's number.
    pub partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// `topic-partition`, as Kafka's tools write it.
impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// `a-0,a-1,b-0`: partitions for a log line (what Kafka's tools print).
pub fn listed(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One topic's `(partition, value)` pairs.
pub type OfTopic<V> = (Arc<str>, Vec<(i32, V)>);

/// Groups `(partition, value)` pairs by topic, in topic order (a request
/// per topic, as Kafka's offset calls take them).
pub fn by_topic<V: Clone>(items: &[(TopicPartition, V)]) -> Vec<OfTopic<V>> {
    let mut out: std::collections::BTreeMap<Arc<str>, Vec<(i32, V)>> = Default::default();
    for (tp, v) in items {
        out.entry(tp.topic.clone())
            .or_default()
            .push((tp.partition, v.clone()));
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_topic_then_partition_and_groups_by_topic() {
        let mut tps = [
            TopicPartition::new("b", 0),
            TopicPartition::new("a", 2),
            TopicPartition::new("a", 1),
        ];
        tps.sort();
        assert_eq!(
            tps.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["a-1", "a-2", "b-0"]
        );
        let grouped = by_topic(&tps.iter().map(|t| (t.clone(), ())).collect::<Vec<_>>());
        assert_eq!(grouped.len(), 2);
        assert_eq!(&*grouped[0].0, "a");
        assert_eq!(
            grouped[0].1.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
