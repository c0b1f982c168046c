//! Keyed output keeps per-key order end to end: the output partition is
//! chosen from the key like the Java client does, and within an input
//! partition records are delivered in order, so for every key the output
//! holds its events in input order.

use std::collections::BTreeMap;

use pipeline_tests::{Broker, generate, pipeline, plugin, read_all};

/// 20,000 events from 50 users (keys repeat) on 6 partitions, through
/// 2 stages into a 4-partition output: every key's events come out in the
/// order they went in, all on one output partition.
#[tokio::test(flavor = "multi_thread")]
async fn per_key_order_holds_end_to_end() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    generate(
        &b,
        "in",
        &[
            "--partitions",
            "6",
            "--users",
            "50",
            "--count",
            "20000",
            "--seed",
            "3",
        ],
    );
    let client = broker.client().await;
    pipeline_tests::create_topic(&client, "out", 4).await;
    let out = pipeline(&b, "in", "out")
        .args(["--until-end", "--max-batch-records", "300"])
        .arg("--plugin")
        .arg(plugin("categorize"))
        .arg("--plugin")
        .arg(plugin("anomaly"))
        .output()
        .expect("pipeline-host");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut input_order: BTreeMap<Vec<u8>, Vec<(i32, i64)>> = BTreeMap::new();
    for r in read_all(&client, "in").await {
        input_order
            .entry(r.record.key.clone().expect("keyed"))
            .or_default()
            .push((r.partition, r.offset));
    }
    assert_eq!(input_order.len(), 50);
    let mut output_order: BTreeMap<Vec<u8>, Vec<(i32, i64)>> = BTreeMap::new();
    let mut output_partitions: BTreeMap<Vec<u8>, std::collections::BTreeSet<i32>> = BTreeMap::new();
    for r in read_all(&client, "out").await {
        // read_all returns each partition in offset order.
        let key = r.record.key.clone().expect("keyed");
        let src = (
            r.header("pipeline.source.partition")
                .expect("header")
                .parse()
                .expect("number"),
            r.header("pipeline.source.offset")
                .expect("header")
                .parse()
                .expect("number"),
        );
        output_order.entry(key.clone()).or_default().push(src);
        output_partitions
            .entry(key)
            .or_default()
            .insert(r.partition);
    }
    for (key, want) in &input_order {
        assert_eq!(
            output_order.get(key),
            Some(want),
            "order of key {}",
            String::from_utf8_lossy(key)
        );
        assert_eq!(
            output_partitions[key].len(),
            1,
            "one output partition per key"
        );
    }
}
