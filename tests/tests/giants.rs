//! Records the broker stores small but that are large, through a real
//! broker: `max.message.bytes` applies to the compressed batch, so a 3 MB
//! value its producer sent zstd-compressed takes a few kilobytes in the
//! input topic. The pipeline must be able to write it again (compressing
//! the output, `--output-compression`, or retrying the one record
//! zstd-compressed), and a batch that inflates to far more than it should
//! (a decompression bomb) must not take the host's memory: past the cap on
//! what one fetch may inflate to, it is a dead letter of its compressed
//! bytes. The previous host never compressed, so the 3 MB value could be
//! written neither as output nor as a dead letter, and every run exited 9
//! at the same offset.

use std::time::Duration;

use pipeline_tests::kafka::tool;
use pipeline_tests::{
    Broker, count, create_topic, read_all, sigterm, wait_count, wait_exit, wat_stage,
};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;

/// `n` small JSON events as records.
fn events(from: usize, n: usize) -> Vec<Record> {
    (from..from + n)
        .map(|i| record(format!(r#"{{"n":{i},"device_type":"android"}}"#).into_bytes()))
        .collect()
}

fn record(value: Vec<u8>) -> Record {
    Record {
        key: None,
        value: Some(value),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    }
}

/// A JSON event whose value is `bytes` long (a padded string member).
fn giant(n: usize, bytes: usize) -> Vec<u8> {
    let head = format!(r#"{{"n":{n},"pad":""#);
    let mut v = head.into_bytes();
    v.resize(bytes - 2, b'a');
    v.extend_from_slice(b"\"}");
    v
}

/// Produces `records` to partition 0 of `topic` in one batch compressed
/// with `compression`, as a producer with `compression.type` set does.
async fn produce_compressed(
    client: &rskafka::client::Client,
    topic: &str,
    records: Vec<Record>,
    compression: Compression,
) {
    client
        .partition_client(topic, 0, UnknownTopicHandling::Retry)
        .await
        .expect("partition client")
        .produce(records, compression)
        .await
        .expect("the broker takes the compressed batch");
}

/// Runs the `keep` stage from "in" to "out" until the end; its stderr.
fn run_to_end(dir: &std::path::Path, broker: &Broker, extra: &[&str]) -> String {
    let stage = wat_stage(dir, "keep", "keep", 0);
    let run = pipeline_tests::pipeline(&broker.bootstrap(), "in", "out")
        .arg("--plugin")
        .arg(&stage)
        .args(["--until-end", "--group", "giants"])
        .args(extra)
        .output()
        .expect("pipeline-host");
    let log = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zstd_compressed_3_mb_value_among_2000_events_goes_through() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    produce_compressed(&client, "in", events(0, 1000), Compression::Zstd).await;
    let big = giant(1000, 3 << 20);
    produce_compressed(&client, "in", vec![record(big.clone())], Compression::Zstd).await;
    produce_compressed(&client, "in", events(1001, 1000), Compression::Zstd).await;

    let dir = tempfile::tempdir().expect("tempdir");
    run_to_end(dir.path(), &broker, &[]);
    let out = read_all(&client, "out").await;
    assert_eq!(out.len(), 2001, "every event is in the output");
    let written = out
        .iter()
        .find(|r| r.source().1 == 1000)
        .expect("the giant's output");
    assert!(
        written.record.value.as_deref() == Some(big.as_slice()),
        "the giant is written as it came"
    );
    assert_eq!(count(&client, "in-dlq").await, 0);
    eprintln!("a 3 MB value zstd-compressed by its producer: 2001 of 2001 events in the output");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_compression_is_a_setting() {
    let mut broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    produce_compressed(&client, "in", events(0, 500), Compression::NoCompression).await;
    let dir = tempfile::tempdir().expect("tempdir");
    run_to_end(dir.path(), &broker, &["--output-compression", "lz4"]);
    assert_eq!(count(&client, "out").await, 500);
    let segment = broker
        .kafka_mut()
        .node(1)
        .dir
        .join("data/out-0/00000000000000000000.log");
    let (ok, dump, err) = tool("dump-log", &["--files", &segment.display().to_string()]);
    assert!(ok, "{dump} {err}");
    // "compresscodec: lz4" on each batch's line.
    let codecs: Vec<&str> = dump
        .split("compresscodec:")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    eprintln!("output batches written with --output-compression lz4: {codecs:?}");
    assert!(!codecs.is_empty(), "{dump}");
    assert!(
        codecs.iter().all(|c| c.eq_ignore_ascii_case("lz4")),
        "{codecs:?}"
    );
}

/// Peak resident memory of process `pid`, in bytes (Linux `VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// What the host may hold at its peak while a bomb is read: its own
/// working set (under 100 MB in the benchmarks) plus the inflation cap of
/// one fetch (64 MiB by default).
const BOMB_RSS_BOUND: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_decompression_bomb_is_a_dead_letter_and_memory_stays_bounded() {
    let broker = Broker::start();
    let client = broker.client().await;
    create_topic(&client, "in", 1).await;
    produce_compressed(&client, "in", events(0, 100), Compression::Zstd).await;
    // 128 records of 4 MiB each: 512 MiB that zstd packs into kilobytes.
    let bomb: Vec<Record> = (0..128).map(|i| record(giant(100 + i, 4 << 20))).collect();
    produce_compressed(&client, "in", bomb, Compression::Zstd).await;
    produce_compressed(&client, "in", events(228, 100), Compression::Zstd).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let stage = wat_stage(dir.path(), "keep", "keep", 0);
    let mut member = pipeline_tests::pipeline(&broker.bootstrap(), "in", "out")
        .arg("--plugin")
        .arg(&stage)
        .args(["--group", "bomb"])
        .stderr(std::fs::File::create(dir.path().join("run.log")).expect("log"))
        .spawn()
        .expect("pipeline-host");
    wait_count(&client, "out", 200, Duration::from_secs(60)).await;
    wait_count(&client, "in-dlq", 1, Duration::from_secs(60)).await;
    let peak = peak_rss(member.id());
    sigterm(&member);
    let status = wait_exit(&mut member, Duration::from_secs(30));
    assert!(status.success());
    let dlq = read_all(&client, "in-dlq").await;
    assert_eq!(dlq.len(), 1, "the bomb is one dead letter");
    let why = dlq[0].header("pipeline.error.reason").unwrap_or_default();
    assert!(why.contains("inflates past the cap"), "{why}");
    assert!(why.contains("(offsets 100 to 227)"), "{why}");
    let raw = dlq[0].record.value.as_deref().unwrap_or_default();
    eprintln!(
        "decompression bomb (512 MiB in a {} byte batch): a dead letter; peak RSS {:.1} MB (bound {} MB)",
        raw.len(),
        peak as f64 / 1e6,
        BOMB_RSS_BOUND >> 20
    );
    assert!(
        raw.len() < 1 << 20,
        "the dead letter is the compressed batch"
    );
    assert!(peak < BOMB_RSS_BOUND, "peak RSS {peak} bytes");
    assert_eq!(count(&client, "out").await, 200, "the rest flowed");
}
