//! Headers pass through unchanged, through Apache Kafka (issue 13 item 8).
//! A Kafka record's headers are a list: their order, repeated names and
//! names that are not UTF-8 reach the output and the dead-letter copy as
//! the input had them, followed by the headers the pipeline adds. The
//! previous host kept headers in a map: repeats collapsed to one, the order
//! became alphabetical, and a non-UTF-8 name failed the whole fetch.
//! `tests/python/interop.py` checks the same with confluent-kafka's
//! producer and consumer.

use pipeline_tests::{Broker, create_topic, produce_batch, read_all, run_stage_to_end, wat_stage};
use rskafka::record::EncodedRecords;

/// The headers of input `n`: repeats, an order no sort gives, a name and a
/// value that are not UTF-8, an empty value, and a stale source header of
/// an earlier pipeline (which the sink replaces).
fn input_headers(n: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b"zeta".to_vec(), vec![n]),
        (b"dup".to_vec(), b"first".to_vec()),
        (vec![0xff, 0xfe, b'k'], vec![0x00, 0xc3]),
        (b"dup".to_vec(), b"second".to_vec()),
        (b"alpha".to_vec(), Vec::new()),
        (b"pipeline.source.topic".to_vec(), b"upstream".to_vec()),
        (b"dup".to_vec(), b"third".to_vec()),
    ]
}

/// What must come first on every output and dead letter of input `n`.
fn kept(n: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    input_headers(n)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(b"pipeline."))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_keep_their_order_repeats_and_bytes() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut batch = EncodedRecords::new();
    for n in 0..40u8 {
        // Every fifth value is not JSON: a dead letter of stage `host`.
        let value = if n % 5 == 0 {
            format!("not json {n}")
        } else {
            format!(r#"{{"n":{n}}}"#)
        };
        let headers = input_headers(n);
        batch.push(
            Some(&[n]),
            Some(value.as_bytes()),
            headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            now,
        );
    }
    produce_batch(&client, "in", 0, batch).await;

    let dir = tempfile::tempdir().expect("tempdir");
    // A stage that changes every value: headers survive a new value too.
    let stage = wat_stage(dir.path(), "stamp", "stamp", 3);
    run_stage_to_end(&broker.bootstrap(), "in", "out", &stage);

    let out = read_all(&client, "out").await;
    let dlq = read_all(&client, "in-dlq").await;
    assert_eq!((out.len(), dlq.len()), (32, 8), "outputs and dead letters");
    for r in out.iter().chain(&dlq) {
        let n = r.record.key.as_deref().expect("key")[0];
        let headers = &r.record.headers.0;
        assert_eq!(
            headers[..kept(n).len()],
            kept(n)[..],
            "input {n}'s headers first, unchanged"
        );
        let added: Vec<&[u8]> = headers[kept(n).len()..]
            .iter()
            .map(|(k, _)| k.as_slice())
            .collect();
        let source: [&[u8]; 3] = [
            b"pipeline.source.topic",
            b"pipeline.source.partition",
            b"pipeline.source.offset",
        ];
        if n % 5 == 0 {
            assert_eq!(
                added,
                [&b"pipeline.error.stage"[..], b"pipeline.error.reason"]
                    .into_iter()
                    .chain(source)
                    .collect::<Vec<_>>(),
                "dead letter {n}"
            );
        } else {
            assert_eq!(added, source, "output {n}");
            let value = r.record.value.as_deref().expect("value");
            assert!(
                std::str::from_utf8(value)
                    .expect("utf-8")
                    .contains(r#""stage_version":3"#),
                "the stage ran"
            );
        }
        assert_eq!(r.header("pipeline.source.topic").as_deref(), Some("in"));
    }
    eprintln!(
        "headers: {} outputs and {} dead letters carry their input's {} headers unchanged",
        out.len(),
        dlq.len(),
        kept(0).len()
    );
}
