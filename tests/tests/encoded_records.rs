//! The sink's record encoding (`EncodedRecords`, produced with
//! `PartitionClient::produce_encoded`, a patch in `host/vendor/rskafka`)
//! through a real broker: every field of every record reads back unchanged
//! with rskafka's own decoder, including the cases where varints take
//! several bytes, keys or values are null or empty, timestamps go backwards
//! within a batch, and records carry several headers.

use std::sync::Arc;

use pipeline_tests::{broker_with_topic, read_all};
use rskafka::chrono::DateTime;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::{EncodedRecords, Record};

type Header = (String, Vec<u8>);
/// Key, value, headers, timestamp (ms).
type Case = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<Header>, i64);

fn cases() -> Vec<Case> {
    let big = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    vec![
        (
            Some(b"k".to_vec()),
            Some(b"{}".to_vec()),
            vec![],
            1_700_000_000_000,
        ),
        (
            None,
            Some(big(200)),
            vec![("h".into(), b"x".to_vec())],
            1_700_000_000_500,
        ),
        // Earlier than the first record: a negative timestamp delta.
        (Some(Vec::new()), None, vec![], 1_699_999_999_000),
        (
            Some(big(130)),
            Some(big(20_000)),
            vec![
                ("pipeline.source.topic".into(), b"in".to_vec()),
                ("empty".into(), Vec::new()),
                ("b".repeat(140), big(300)),
            ],
            1_700_000_100_000,
        ),
        (None, None, vec![], 0),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_records_read_back_unchanged() {
    let (_broker, _, client) = broker_with_topic("enc", 1).await;
    let pc = client
        .partition_client("enc", 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let cases = cases();
    let mut encoded = EncodedRecords::new();
    for (key, value, headers, ts) in &cases {
        encoded.push(
            key.as_deref(),
            value.as_deref(),
            headers.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())),
            *ts,
        );
    }
    assert_eq!(encoded.len(), cases.len());
    let encoded = Arc::new(encoded);
    // Twice with the same bytes, as a retry would.
    for _ in 0..2 {
        let offsets = pc
            .produce_encoded(encoded.clone(), Compression::NoCompression)
            .await
            .unwrap();
        assert_eq!(offsets.len(), cases.len());
    }
    let read = read_all(&client, "enc").await;
    assert_eq!(read.len(), 2 * cases.len());
    for (i, r) in read.iter().enumerate() {
        let (key, value, headers, ts) = &cases[i % cases.len()];
        let want = Record {
            key: key.clone(),
            value: value.clone(),
            headers: headers.iter().cloned().collect(),
            timestamp: DateTime::from_timestamp_millis(*ts).unwrap(),
        };
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.record, want, "record {i}");
    }
}
