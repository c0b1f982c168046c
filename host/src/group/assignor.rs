//! Partition assignment, done by the group leader: `range` (Kafka's
//! RangeAssignor for one topic) and `cooperative-sticky` (members keep the
//! partitions they own where the balance allows, so a rebalance moves as few
//! partitions as possible). Also the consumer-protocol metadata blobs
//! members exchange through the coordinator.

use std::collections::{BTreeMap, BTreeSet};

use crate::kafka::TopicPartition;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedPartitions;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Which assignor the group uses.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Assignor {
    /// Contiguous ranges of partitions per member, in member-id order.
    #[default]
    Range,
    /// Balanced, keeping owned partitions where possible.
    CooperativeSticky,
}

impl Assignor {
    /// The protocol name members agree on.
    pub fn protocol_name(&self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// Assigns partitions `0..partitions` of one topic among `members`
    /// (member id -> partitions it owns now).
    pub fn assign(
        &self,
        partitions: i32,
        members: &BTreeMap<String, Vec<i32>>,
    ) -> BTreeMap<String, Vec<i32>> {
        match self {
            Assignor::Range => range(partitions, members.keys()),
            Assignor::CooperativeSticky => {
                cooperative(&(0..partitions).collect::<Vec<_>>(), members)
            }
        }
    }
}

/// The cooperative protocol's rule on top of [`sticky`] (KIP-429, as Java's
/// `CooperativeStickyAssignor` does): a partition that moves away from a
/// member that owns it now is given to nobody in this generation. Its
/// owner revokes it, commits, and rejoins at once; the next generation
/// hands it to its new member. Otherwise the new member would read the
/// committed offset while the old one still processes the partition, and
/// both would produce the same records.
pub fn cooperative<T: Ord + Clone>(
    items: &[T],
    members: &BTreeMap<String, Vec<T>>,
) -> BTreeMap<String, Vec<T>> {
    let mut plan = sticky(items, members);
    for (member, assigned) in plan.iter_mut() {
        assigned.retain(|p| {
            !members
                .iter()
                .any(|(other, owned)| other != member && owned.contains(p))
        });
    }
    plan
}

/// Kafka's range assignor: member `i` of `n` (sorted by id) gets
/// `partitions / n` consecutive partitions, the first `partitions % n`
/// members one more.
pub fn range<'a>(
    partitions: i32,
    members: impl Iterator<Item = &'a String>,
) -> BTreeMap<String, Vec<i32>> {
    let members: Vec<&String> = members.collect();
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let n = members.len() as i32;
    let (per, extra) = (partitions / n, partitions % n);
    let mut next = 0;
    for (i, m) in members.iter().enumerate() {
        let count = per + i32::from((i as i32) < extra);
        out.insert((*m).clone(), (next..next + count).collect());
        next += count;
    }
    out
}

/// Sticky balanced assignment of `items` (partitions, of one topic or of
/// several): every member ends with `floor` or `floor+1` of them; a member
/// keeps what it owns up to its quota, and the rest are handed out to the
/// members with the fewest.
pub fn sticky<T: Ord + Clone>(
    items: &[T],
    members: &BTreeMap<String, Vec<T>>,
) -> BTreeMap<String, Vec<T>> {
    let mut out: BTreeMap<String, Vec<T>> =
        members.keys().map(|m| (m.clone(), Vec::new())).collect();
    if out.is_empty() {
        return out;
    }
    let n = out.len();
    let (floor, extra) = (items.len() / n, items.len() % n);
    let exists: BTreeSet<&T> = items.iter().collect();
    let mut taken: BTreeSet<T> = BTreeSet::new();
    let mut with_extra = 0;
    // Keep owned partitions, most-owning members first so they can keep the
    // `floor + 1` quota.
    let mut by_owned: Vec<(&String, &Vec<T>)> = members.iter().collect();
    by_owned.sort_by_key(|(m, owned)| (std::cmp::Reverse(owned.len()), (*m).clone()));
    for (m, owned) in by_owned {
        let quota = if with_extra < extra { floor + 1 } else { floor };
        let mut keep = Vec::new();
        for p in owned {
            if keep.len() == quota {
                break;
            }
            if exists.contains(p) && taken.insert(p.clone()) {
                keep.push(p.clone());
            }
        }
        if keep.len() == floor + 1 {
            with_extra += 1;
        }
        out.insert(m.clone(), keep);
    }
    for p in items {
        if taken.contains(p) {
            continue;
        }
        let target = out
            .iter()
            .filter(|(_, ps)| ps.len() < floor || (ps.len() == floor && with_extra < extra))
            .min_by_key(|(m, ps)| (ps.len(), (*m).clone()))
            .map(|(m, _)| m.clone())
            .expect("quotas cover every partition");
        let ps = out.get_mut(&target).expect("member exists");
        ps.push(p.clone());
        if ps.len() == floor + 1 {
            with_extra += 1;
        }
    }
    for ps in out.values_mut() {
        ps.sort_unstable();
    }
    out
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// A member's subscription blob: version 1 (with owned partitions), of
/// the topics it reads.
pub fn encode_subscription(topics: &[String], owned: &[TopicPartition]) -> Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in owned {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.clone()))
                .collect(),
        )
        .with_owned_partitions(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    OwnedPartitions::default()
                        .with_topic(topic(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    versioned(1, |b| sub.encode(b, 1))
}

/// What one member subscribes to and owns, from its subscription blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// The topics it reads.
    pub topics: Vec<String>,
    /// Topic -> the partitions it owns now (cooperative protocol).
    pub owned: BTreeMap<String, Vec<i32>>,
}

/// Decodes a subscription blob (any member's: another pipeline, or a Java
/// consumer, may read other topics in the same group).
pub fn decode_subscription(blob: &[u8]) -> Subscription {
    let mut buf = Bytes::copy_from_slice(blob);
    if buf.remaining() < 2 {
        return Subscription::default();
    }
    let version = buf.get_i16();
    ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3))
        .map(|s| {
            let mut owned: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for t in s.owned_partitions {
                owned
                    .entry(t.topic.0.as_str().to_owned())
                    .or_default()
                    .extend(t.partitions);
            }
            Subscription {
                topics: s.topics.iter().map(|t| t.as_str().to_owned()).collect(),
                owned,
            }
        })
        .unwrap_or_default()
}

/// The group leader's plan for members whose subscriptions may differ, as
/// Java's assignors do: each topic's partitions (`counts`) go only to the
/// members subscribed to it. `range` assigns topic by topic (Kafka's
/// RangeAssignor); `cooperative-sticky` balances the partitions of all the
/// topics a set of members shares together, so three one-partition topics
/// spread over two members 2/1, not 3/0. A topic whose partition count is
/// unknown is assigned to nobody. Member id -> topic -> partitions; every
/// member has an entry.
pub fn assign_subscriptions(
    assignor: Assignor,
    counts: &BTreeMap<String, i32>,
    members: &BTreeMap<String, Subscription>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut plan: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    let subscribers = |topic: &String| -> Vec<String> {
        members
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .map(|(m, _)| m.clone())
            .collect()
    };
    match assignor {
        Assignor::Range => {
            for (topic, &partitions) in counts {
                for (member, ps) in range(partitions, subscribers(topic).iter()) {
                    if !ps.is_empty() {
                        plan.entry(member).or_default().insert(topic.clone(), ps);
                    }
                }
            }
        }
        Assignor::CooperativeSticky => {
            // Topics grouped by who reads them; each group balanced as one.
            let mut shared: BTreeMap<Vec<String>, Vec<&String>> = BTreeMap::new();
            for topic in counts.keys() {
                let readers = subscribers(topic);
                if !readers.is_empty() {
                    shared.entry(readers).or_default().push(topic);
                }
            }
            for (readers, topics) in shared {
                let items: Vec<TopicPartition> = topics
                    .iter()
                    .flat_map(|t| (0..counts[*t]).map(|p| TopicPartition::new(t.as_str(), p)))
                    .collect();
                let owned: BTreeMap<String, Vec<TopicPartition>> = readers
                    .iter()
                    .map(|m| {
                        let owned = members[m]
                            .owned
                            .iter()
                            .filter(|(t, _)| topics.contains(t))
                            .flat_map(|(t, ps)| {
                                ps.iter().map(|p| TopicPartition::new(t.as_str(), *p))
                            })
                            .collect();
                        (m.clone(), owned)
                    })
                    .collect();
                for (member, tps) in cooperative(&items, &owned) {
                    let of = plan.entry(member).or_default();
                    for tp in tps {
                        of.entry(tp.topic.to_string())
                            .or_default()
                            .push(tp.partition);
                    }
                }
            }
        }
    }
    plan
}

/// An assignment blob (version 0) of topic -> partitions.
pub fn encode_assignment(assigned: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        assigned
            .iter()
            .map(|(t, ps)| {
                AssignedPartitions::default()
                    .with_topic(topic(t))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    versioned(0, |b| a.encode(b, 0))
}

/// Decodes an assignment blob into its partitions, sorted.
pub fn decode_assignment(blob: &[u8]) -> Vec<TopicPartition> {
    let mut buf = Bytes::copy_from_slice(blob);
    if buf.remaining() < 2 {
        return Vec::new(); // an empty assignment
    }
    let version = buf.get_i16();
    let mut out: Vec<TopicPartition> =
        ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3))
            .map(|a| {
                a.assigned_partitions
                    .into_iter()
                    .flat_map(|t| {
                        let topic: std::sync::Arc<str> = t.topic.0.as_str().into();
                        t.partitions
                            .into_iter()
                            .map(move |p| TopicPartition::new(topic.clone(), p))
                    })
                    .collect()
            })
            .unwrap_or_default();
    out.sort_unstable();
    out.dedup();
    out
}

fn versioned(version: i16, encode: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(version);
    encode(&mut b).expect("encoding into memory cannot fail");
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions 0..n of one topic.
    fn ps(n: i32) -> Vec<i32> {
        (0..n).collect()
    }

    fn members(owned: &[(&str, &[i32])]) -> BTreeMap<String, Vec<i32>> {
        owned
            .iter()
            .map(|(m, o)| (m.to_string(), o.to_vec()))
            .collect()
    }

    #[test]
    fn range_splits_like_kafka() {
        let m = members(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let r = range(7, m.keys());
        assert_eq!(r["a"], [0, 1, 2]);
        assert_eq!(r["b"], [3, 4]);
        assert_eq!(r["c"], [5, 6]);
        assert_eq!(
            range(6, m.keys())
                .values()
                .map(Vec::len)
                .collect::<Vec<_>>(),
            [2, 2, 2]
        );
    }

    #[test]
    fn sticky_keeps_what_it_can_and_balances() {
        // b leaves: a and c keep theirs, b's partitions are spread.
        let m = members(&[("a", &[0, 1]), ("c", &[4, 5])]);
        let r = sticky(&ps(6), &m);
        assert!(r["a"].contains(&0) && r["a"].contains(&1), "{r:?}");
        assert!(r["c"].contains(&4) && r["c"].contains(&5));
        assert_eq!(r["a"].len() + r["c"].len(), 6);
        assert_eq!(r["a"].len(), 3);
        // A newcomer takes from the largest, and the others keep the rest.
        let m = members(&[("a", &[0, 1, 2]), ("c", &[3, 4, 5]), ("d", &[])]);
        let r = sticky(&ps(6), &m);
        assert_eq!(r.values().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert!(r["a"].iter().all(|p| [0, 1, 2].contains(p)));
        assert!(r["c"].iter().all(|p| [3, 4, 5].contains(p)));
        // A partition claimed twice goes to one member only.
        let m = members(&[("a", &[0, 1]), ("b", &[1, 2])]);
        let r = sticky(&ps(4), &m);
        let mut all: Vec<i32> = r.values().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3]);
    }

    #[test]
    fn cooperative_hands_a_moving_partition_over_in_two_generations() {
        // A newcomer: sticky would give it one partition of each member;
        // cooperatively it gets them only after their owners let go.
        let first = members(&[("a", &[0, 1, 2]), ("c", &[3, 4, 5]), ("d", &[])]);
        let r = cooperative(&ps(6), &first);
        assert!(r["d"].is_empty(), "{r:?}");
        assert_eq!(r["a"].len() + r["c"].len(), 4, "{r:?}");
        let second = members(&[("a", &r["a"]), ("c", &r["c"]), ("d", &[])]);
        let r2 = cooperative(&ps(6), &second);
        assert_eq!(r2.values().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(
            (&r2["a"], &r2["c"]),
            (&r["a"], &r["c"]),
            "owners keep theirs"
        );
        // A member that died: its partitions are owned by nobody now, so
        // the survivors take them in the same generation.
        let r = cooperative(&ps(6), &members(&[("a", &[0, 1]), ("c", &[4, 5])]));
        assert_eq!(r["a"].len() + r["c"].len(), 6, "{r:?}");
        // Claimed by two (a stale claim): nobody gets it until both let go.
        let r = cooperative(&ps(4), &members(&[("a", &[0, 1]), ("b", &[1, 2])]));
        assert!(r.values().all(|ps| !ps.contains(&1)), "{r:?}");
    }

    #[test]
    fn blobs_round_trip() {
        let owned = [TopicPartition::new("in", 1), TopicPartition::new("in", 3)];
        let sub = encode_subscription(&["in".to_string(), "b".to_string()], &owned);
        let decoded = decode_subscription(&sub);
        assert_eq!(decoded.topics, ["in", "b"]);
        assert_eq!(decoded.owned["in"], [1, 3]);
        let a = encode_assignment(&BTreeMap::from([
            ("in".to_string(), vec![2, 0]),
            ("other".to_string(), vec![1]),
        ]));
        let tp = |t: &str, p| TopicPartition::new(t, p);
        assert_eq!(
            decode_assignment(&a),
            [tp("in", 0), tp("in", 2), tp("other", 1)]
        );
        assert!(decode_assignment(&[]).is_empty());
    }

    #[test]
    fn members_get_only_the_topics_they_subscribe_to() {
        let sub = |topic: &str, owned: &[i32]| Subscription {
            topics: vec![topic.to_string()],
            owned: BTreeMap::from([(topic.to_string(), owned.to_vec())]),
        };
        let members = BTreeMap::from([
            ("a1".to_string(), sub("a", &[])),
            ("a2".to_string(), sub("a", &[])),
            ("b1".to_string(), sub("b", &[0, 1])),
        ]);
        let counts = BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 2)]);
        for assignor in [Assignor::Range, Assignor::CooperativeSticky] {
            let plan = assign_subscriptions(assignor, &counts, &members);
            let mut of_a: Vec<i32> = ["a1", "a2"]
                .iter()
                .flat_map(|m| {
                    assert!(plan[*m].keys().all(|t| t == "a"), "{plan:?}");
                    plan[*m]["a"].clone()
                })
                .collect();
            of_a.sort_unstable();
            assert_eq!(of_a, [0, 1, 2], "{assignor:?}");
            assert_eq!(plan["b1"], BTreeMap::from([("b".to_string(), vec![0, 1])]));
        }
        // A topic nobody reads, or whose count is unknown, goes to nobody.
        let plan = assign_subscriptions(Assignor::Range, &BTreeMap::new(), &members);
        assert!(plan.values().all(BTreeMap::is_empty));
    }

    #[test]
    fn cooperative_sticky_balances_across_topics_and_range_per_topic() {
        let sub = |owned: &[(&str, &[i32])]| Subscription {
            topics: vec!["a".into(), "b".into(), "c".into()],
            owned: owned
                .iter()
                .map(|(t, p)| (t.to_string(), p.to_vec()))
                .collect(),
        };
        let counts: BTreeMap<String, i32> = [("a", 1), ("b", 1), ("c", 1)]
            .map(|(t, n)| (t.to_string(), n))
            .into();
        let members = BTreeMap::from([("m1".to_string(), sub(&[])), ("m2".to_string(), sub(&[]))]);
        let total = |plan: &BTreeMap<String, BTreeMap<String, Vec<i32>>>, m: &str| {
            plan[m].values().map(Vec::len).sum::<usize>()
        };
        let plan = assign_subscriptions(Assignor::CooperativeSticky, &counts, &members);
        assert_eq!((total(&plan, "m1"), total(&plan, "m2")), (2, 1), "{plan:?}");
        // Range is per topic: partition 0 of each topic to the first member.
        let plan = assign_subscriptions(Assignor::Range, &counts, &members);
        assert_eq!((total(&plan, "m1"), total(&plan, "m2")), (3, 0), "{plan:?}");
        // Owners keep theirs across topics; a newcomer waits for a release.
        let members = BTreeMap::from([
            ("m1".to_string(), sub(&[("a", &[0]), ("b", &[0])])),
            ("m2".to_string(), sub(&[("c", &[0])])),
            ("m3".to_string(), sub(&[])),
        ]);
        let plan = assign_subscriptions(Assignor::CooperativeSticky, &counts, &members);
        assert_eq!(plan["m2"]["c"], [0]);
        assert_eq!(total(&plan, "m1"), 1, "m1 gives one up: {plan:?}");
        assert_eq!(total(&plan, "m3"), 0, "not in this generation: {plan:?}");
    }
}
