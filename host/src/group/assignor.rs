//! Partition assignment, done by the group leader: `range` (Kafka's
//! RangeAssignor for one topic) and `cooperative-sticky` (members keep the
//! partitions they own where the balance allows, so a rebalance moves as few
//! partitions as possible). Also the consumer-protocol metadata blobs
//! members exchange through the coordinator.

use std::collections::BTreeMap;

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

    /// Assigns `partitions` partitions among `members` (member id ->
    /// partitions it owns now).
    pub fn assign(
        &self,
        partitions: i32,
        members: &BTreeMap<String, Vec<i32>>,
    ) -> BTreeMap<String, Vec<i32>> {
        match self {
            Assignor::Range => range(partitions, members.keys()),
            Assignor::CooperativeSticky => cooperative(partitions, members),
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
pub fn cooperative(
    partitions: i32,
    members: &BTreeMap<String, Vec<i32>>,
) -> BTreeMap<String, Vec<i32>> {
    let mut plan = sticky(partitions, members);
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

/// Sticky balanced assignment: every member ends with `floor` or `floor+1`
/// partitions; a member keeps what it owns up to its quota, and the rest
/// are handed out to the members with the fewest.
pub fn sticky(partitions: i32, members: &BTreeMap<String, Vec<i32>>) -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> =
        members.keys().map(|m| (m.clone(), Vec::new())).collect();
    if out.is_empty() {
        return out;
    }
    let n = out.len() as i32;
    let (floor, extra) = (partitions / n, partitions % n);
    let mut taken = vec![false; partitions.max(0) as usize];
    let mut with_extra = 0;
    // Keep owned partitions, most-owning members first so they can keep the
    // `floor + 1` quota.
    let mut by_owned: Vec<(&String, &Vec<i32>)> = members.iter().collect();
    by_owned.sort_by_key(|(m, owned)| (std::cmp::Reverse(owned.len()), (*m).clone()));
    for (m, owned) in by_owned {
        let quota = if with_extra < extra { floor + 1 } else { floor } as usize;
        let keep: Vec<i32> = owned
            .iter()
            .copied()
            .filter(|p| (0..partitions).contains(p) && !taken[*p as usize])
            .take(quota)
            .collect();
        if keep.len() as i32 == floor + 1 {
            with_extra += 1;
        }
        for p in &keep {
            taken[*p as usize] = true;
        }
        out.insert(m.clone(), keep);
    }
    for p in 0..partitions {
        if taken[p as usize] {
            continue;
        }
        let target = out
            .iter()
            .filter(|(_, ps)| {
                (ps.len() as i32) < floor || ((ps.len() as i32) == floor && with_extra < extra)
            })
            .min_by_key(|(m, ps)| (ps.len(), (*m).clone()))
            .map(|(m, _)| m.clone())
            .expect("quotas cover every partition");
        let ps = out.get_mut(&target).expect("member exists");
        ps.push(p);
        if ps.len() as i32 == floor + 1 {
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

/// A member's subscription blob: version 1 (with owned partitions).
pub fn encode_subscription(input: &str, owned: &[i32]) -> Bytes {
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_string(input.to_owned())])
        .with_owned_partitions(vec![
            OwnedPartitions::default()
                .with_topic(topic(input))
                .with_partitions(owned.to_vec()),
        ]);
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
/// members subscribed to it, with `assignor` per topic. A topic whose
/// partition count is unknown is assigned to nobody. Member id -> topic ->
/// partitions; every member has an entry.
pub fn assign_subscriptions(
    assignor: Assignor,
    counts: &BTreeMap<String, i32>,
    members: &BTreeMap<String, Subscription>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut plan: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, &partitions) in counts {
        let subscribers: BTreeMap<String, Vec<i32>> = members
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .map(|(m, s)| (m.clone(), s.owned.get(topic).cloned().unwrap_or_default()))
            .collect();
        for (member, ps) in assignor.assign(partitions, &subscribers) {
            if !ps.is_empty() {
                plan.entry(member).or_default().insert(topic.clone(), ps);
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

/// Decodes an assignment blob into the partitions of `input`.
pub fn decode_assignment(input: &str, blob: &[u8]) -> Vec<i32> {
    let mut buf = Bytes::copy_from_slice(blob);
    if buf.remaining() < 2 {
        return Vec::new(); // an empty assignment
    }
    let version = buf.get_i16();
    let mut out: Vec<i32> = ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3))
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .filter(|t| t.topic.0.as_str() == input)
                .flat_map(|t| t.partitions)
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
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
        let r = sticky(6, &m);
        assert!(r["a"].contains(&0) && r["a"].contains(&1), "{r:?}");
        assert!(r["c"].contains(&4) && r["c"].contains(&5));
        assert_eq!(r["a"].len() + r["c"].len(), 6);
        assert_eq!(r["a"].len(), 3);
        // A newcomer takes from the largest, and the others keep the rest.
        let m = members(&[("a", &[0, 1, 2]), ("c", &[3, 4, 5]), ("d", &[])]);
        let r = sticky(6, &m);
        assert_eq!(r.values().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert!(r["a"].iter().all(|p| [0, 1, 2].contains(p)));
        assert!(r["c"].iter().all(|p| [3, 4, 5].contains(p)));
        // A partition claimed twice goes to one member only.
        let m = members(&[("a", &[0, 1]), ("b", &[1, 2])]);
        let r = sticky(4, &m);
        let mut all: Vec<i32> = r.values().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3]);
    }

    #[test]
    fn cooperative_hands_a_moving_partition_over_in_two_generations() {
        // A newcomer: sticky would give it one partition of each member;
        // cooperatively it gets them only after their owners let go.
        let first = members(&[("a", &[0, 1, 2]), ("c", &[3, 4, 5]), ("d", &[])]);
        let r = cooperative(6, &first);
        assert!(r["d"].is_empty(), "{r:?}");
        assert_eq!(r["a"].len() + r["c"].len(), 4, "{r:?}");
        let second = members(&[("a", &r["a"]), ("c", &r["c"]), ("d", &[])]);
        let r2 = cooperative(6, &second);
        assert_eq!(r2.values().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(
            (&r2["a"], &r2["c"]),
            (&r["a"], &r["c"]),
            "owners keep theirs"
        );
        // A member that died: its partitions are owned by nobody now, so
        // the survivors take them in the same generation.
        let r = cooperative(6, &members(&[("a", &[0, 1]), ("c", &[4, 5])]));
        assert_eq!(r["a"].len() + r["c"].len(), 6, "{r:?}");
        // Claimed by two (a stale claim): nobody gets it until both let go.
        let r = cooperative(4, &members(&[("a", &[0, 1]), ("b", &[1, 2])]));
        assert!(r.values().all(|ps| !ps.contains(&1)), "{r:?}");
    }

    #[test]
    fn blobs_round_trip() {
        let sub = encode_subscription("in", &[1, 3]);
        let decoded = decode_subscription(&sub);
        assert_eq!(decoded.topics, ["in"]);
        assert_eq!(decoded.owned["in"], [1, 3]);
        let a = encode_assignment(&BTreeMap::from([
            ("in".to_string(), vec![2, 0]),
            ("other".to_string(), vec![1]),
        ]));
        assert_eq!(decode_assignment("in", &a), [0, 2]);
        assert_eq!(decode_assignment("other", &a), [1]);
        assert!(decode_assignment("in", &[]).is_empty());
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
}
