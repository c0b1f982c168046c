//! Default stage `version_counts` (stateful): counts events per
//! `app_version` in tumbling windows, the seed's "counts per app version
//! every 60 seconds".
//!
//! Every event passes through unchanged (verdict keep). When a window
//! closes, the stage logs its counts (like the seed) and emits one record
//! per version to the side output `counts`, which the host maps to a topic
//! (`outputs = { counts = "app-version-counts" }`):
//!
//! - key `<window start ms>/<app_version>/<partition>`;
//! - value `{"window_start":"2023-09-12T00:45:00Z","window_start_ms":..,
//!   "window_end_ms":..,"app_version":"2.3.0","count":600,"partition":0}`.
//!
//! **Counts are per input partition**: each partition's instance counts the
//! events it reads, and the partition is part of the key. The global count
//! of a (window, version) is the sum over partitions of the latest record
//! per key; `pipeline-host counts --topic app-version-counts` prints it.
//! A window re-emitted (after a restart, or a late event) carries the full
//! count again under the same key, so it overwrites instead of adding: the
//! topic can be compacted.
//!
//! **Time** (`time`):
//! - `event` (default): a window is `[start, start + window)` of the
//!   event's `timestamp_field` (epoch seconds, string or integer; an event
//!   without one counts at its Kafka timestamp). It closes once the
//!   partition has seen an event `allowed_lateness_secs` past its end. An
//!   event for a window already closed is late: counted in `late_events`
//!   (logged), not in any window.
//! - `processing`: windows of the host's clock; they close on the host's
//!   timer once their end has passed.
//!
//! **Exactness**: the state (open windows, watermark) is snapshot after each
//! batch and checkpointed with the consumer group's commits; after a crash
//! the host restores the checkpoint of the committed offset and the records
//! after it are counted again, so closed windows carry exact counts.
//!
//! Settings: `field` (default `app_version`), `window_secs` (60), `time`
//! (`event` | `processing`), `timestamp_field` (`timestamp`),
//! `allowed_lateness_secs` (0), `output` (`counts`).

use std::collections::BTreeMap;

use stage_sdk::batch::OutcomesBuilder;
use stage_sdk::time::{epoch_seconds, rfc3339};
use stage_sdk::{
    Batch, BatchStage, Config, Context, Fields, Level, Outcome, Outcomes, SideRecord,
    StatefulStage, log,
};

/// Version of the snapshot encoding.
const STATE_FORMAT: u8 = 1;

/// The counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCounts {
    field: String,
    window_ms: i64,
    event_time: bool,
    timestamp_field: String,
    lateness_ms: i64,
    output: String,
    state: State,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    /// Open windows by start (ms): count per version.
    windows: BTreeMap<i64, BTreeMap<String, u64>>,
    /// Latest event time seen on this partition (ms); `i64::MIN` if none.
    watermark: i64,
    /// Events that arrived after their window closed.
    late: u64,
}

impl VersionCounts {
    /// Event time of a record in ms.
    fn time_of(&self, record: &stage_sdk::Record<'_>, context: &Context) -> i64 {
        if !self.event_time {
            return context.now_ms;
        }
        epoch_seconds(record, &self.timestamp_field)
            .map(|s| s.saturating_mul(1000))
            .unwrap_or(record.timestamp_ms)
    }

    /// Closes every window that ends at or before `until` (ms), returning
    /// its side records and logging its counts.
    fn close(&mut self, until: i64, partition: i32) -> Vec<SideRecord> {
        let mut side = Vec::new();
        while let Some((&start, _)) = self.state.windows.first_key_value() {
            if start + self.window_ms > until {
                break;
            }
            let counts = self.state.windows.remove(&start).unwrap_or_default();
            let summary = counts
                .iter()
                .map(|(v, n)| format!("{v:?}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            log(
                Level::Info,
                &format!(
                    "app version counts, partition {partition}, window {} (+{} s): {{{summary}}}",
                    rfc3339(start.div_euclid(1000)),
                    self.window_ms / 1000
                ),
            );
            for (version, count) in counts {
                let value = Fields::new()
                    .str("window_start", &rfc3339(start.div_euclid(1000)))
                    .int("window_start_ms", start)
                    .int("window_end_ms", start + self.window_ms)
                    .str("app_version", &version)
                    .int("count", count as i64)
                    .int("partition", i64::from(partition))
                    .into_bytes();
                side.push(SideRecord {
                    output: self.output.clone(),
                    key: Some(format!("{start}/{version}/{partition}").into_bytes()),
                    value,
                });
            }
        }
        side
    }
}

impl BatchStage for VersionCounts {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&[
            "field",
            "window_secs",
            "time",
            "timestamp_field",
            "allowed_lateness_secs",
            "output",
        ])?;
        let secs = |key: &str, default: i64| -> Result<i64, String> {
            match config.get(key) {
                None => Ok(default),
                Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    format!("setting {key}: {v:?} is not a whole number of seconds")
                }),
            }
        };
        let window = secs("window_secs", 60)?;
        if window == 0 {
            return Err("setting window_secs: must be at least 1".into());
        }
        Ok(Self {
            field: config.get("field").unwrap_or("app_version").to_owned(),
            window_ms: window * 1000,
            event_time: config.choice("time", &["event", "processing"], "event")? == "event",
            timestamp_field: config
                .get("timestamp_field")
                .unwrap_or("timestamp")
                .to_owned(),
            lateness_ms: secs("allowed_lateness_secs", 0)? * 1000,
            output: config.get("output").unwrap_or("counts").to_owned(),
            state: State {
                watermark: i64::MIN,
                ..State::default()
            },
        })
    }

    fn process_batch(&mut self, batch: &Batch) -> Outcomes {
        let mut out = OutcomesBuilder::with_capacity(batch.len());
        let mut late = 0;
        for record in batch.records() {
            out.push(Outcome::Keep);
            let t = self.time_of(&record, &batch.context);
            let start = t - t.rem_euclid(self.window_ms);
            let closed = self.state.watermark != i64::MIN
                && start + self.window_ms + self.lateness_ms <= self.state.watermark;
            if closed {
                late += 1;
                continue;
            }
            let version = record
                .field(&self.field)
                .and_then(|v| v.as_str().map(|s| s.into_owned()))
                .unwrap_or_else(|| "unknown".to_owned());
            *self
                .state
                .windows
                .entry(start)
                .or_default()
                .entry(version)
                .or_default() += 1;
            if self.event_time {
                self.state.watermark = self.state.watermark.max(t);
            }
        }
        if late > 0 {
            self.state.late += late;
            log(
                Level::Warn,
                &format!(
                    "{late} late event(s) on partition {} (their window had closed; {} in all)",
                    batch.context.partition, self.state.late
                ),
            );
        }
        if self.event_time && self.state.watermark != i64::MIN {
            let until = self.state.watermark.saturating_sub(self.lateness_ms);
            for r in self.close(until, batch.context.partition) {
                out.side(r);
            }
        }
        out.finish()
    }
}

impl StatefulStage for VersionCounts {
    fn on_timer(&mut self, context: &Context) -> Vec<SideRecord> {
        if self.event_time {
            return Vec::new();
        }
        self.close(context.now_ms, context.partition)
    }

    fn snapshot(&self) -> Vec<u8> {
        let s = &self.state;
        let mut b = vec![STATE_FORMAT];
        b.extend(s.watermark.to_le_bytes());
        b.extend(s.late.to_le_bytes());
        b.extend((s.windows.len() as u32).to_le_bytes());
        for (start, counts) in &s.windows {
            b.extend(start.to_le_bytes());
            b.extend((counts.len() as u32).to_le_bytes());
            for (version, n) in counts {
                b.extend((version.len() as u32).to_le_bytes());
                b.extend(version.as_bytes());
                b.extend(n.to_le_bytes());
            }
        }
        b
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let mut r = Reader(state);
        if r.take(1)? != [STATE_FORMAT] {
            return Err(format!(
                "unknown state format (expected version {STATE_FORMAT})"
            ));
        }
        let watermark = r.i64()?;
        let late = r.u64()?;
        let mut windows = BTreeMap::new();
        for _ in 0..r.u32()? {
            let start = r.i64()?;
            let mut counts = BTreeMap::new();
            for _ in 0..r.u32()? {
                let len = r.u32()? as usize;
                let version = String::from_utf8(r.take(len)?.to_vec())
                    .map_err(|_| "a version in the state is not UTF-8".to_string())?;
                counts.insert(version, r.u64()?);
            }
            windows.insert(start, counts);
        }
        if !r.0.is_empty() {
            return Err("trailing bytes after the state".into());
        }
        self.state = State {
            windows,
            watermark,
            late,
        };
        Ok(())
    }
}

/// Reads little-endian numbers off a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the state is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

stage_sdk_stateful::export_stateful_stage!(VersionCounts);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::batch::{BatchBuilder, Verdict};

    fn stage(settings: &[(&str, &str)]) -> VersionCounts {
        let config = Config::new(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        VersionCounts::init(&config).expect("valid settings")
    }

    fn batch(events: &[(i64, &str)]) -> Batch {
        let mut b = BatchBuilder::reuse(
            Batch::default(),
            Context {
                now_ms: 0,
                topic: "in".into(),
                partition: 2,
            },
        );
        for (i, (secs, version)) in events.iter().enumerate() {
            let v = format!(r#"{{"app_version":"{version}","timestamp":"{secs}"}}"#);
            b.push(v.as_bytes(), None, std::iter::empty(), 0, i as i64);
        }
        b.finish()
    }

    fn counts(side: &[SideRecord]) -> Vec<(String, String)> {
        side.iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.clone().unwrap()).unwrap(),
                    String::from_utf8(r.value.clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_window_closes_when_event_time_passes_its_end() {
        let mut s = stage(&[("window_secs", "10")]);
        let out = s.process_batch(&batch(&[(100, "1.0"), (105, "1.0"), (109, "2.0")]));
        assert!(out.verdicts.iter().all(|v| *v == Verdict::Keep));
        assert!(out.side.is_empty(), "the window [100, 110) is still open");
        let out = s.process_batch(&batch(&[(110, "1.0")]));
        let side = counts(&out.side);
        assert_eq!(side.len(), 2);
        assert_eq!(side[0].0, "100000/1.0/2");
        assert!(side[0].1.contains(r#""count":2"#), "{}", side[0].1);
        assert_eq!(side[1].0, "100000/2.0/2");
        assert!(side[1].1.contains(r#""count":1"#));
    }

    #[test]
    fn lateness_keeps_a_window_open_and_late_events_are_not_counted() {
        let mut s = stage(&[("window_secs", "10"), ("allowed_lateness_secs", "5")]);
        s.process_batch(&batch(&[(100, "a"), (112, "a")]));
        let out = s.process_batch(&batch(&[(104, "a")]));
        assert!(out.side.is_empty(), "within lateness: still open");
        let out = s.process_batch(&batch(&[(115, "a")]));
        assert_eq!(counts(&out.side).len(), 1);
        assert!(counts(&out.side)[0].1.contains(r#""count":2"#));
        s.process_batch(&batch(&[(101, "a")]));
        assert_eq!(s.state.late, 1);
    }

    #[test]
    fn snapshot_and_restore_give_the_same_counts() {
        let mut a = stage(&[("window_secs", "10")]);
        a.process_batch(&batch(&[(100, "1.0"), (101, "ü"), (111, "1.0")]));
        let mut b = stage(&[("window_secs", "10")]);
        b.restore(&a.snapshot()).expect("restore");
        assert_eq!(a.state, b.state);
        let (x, y) = (
            a.process_batch(&batch(&[(125, "1.0")])),
            b.process_batch(&batch(&[(125, "1.0")])),
        );
        assert_eq!(x, y);
        assert!(b.restore(&[9]).is_err());
        assert!(b.restore(&a.snapshot()[..5]).is_err());
    }

    #[test]
    fn processing_time_windows_close_on_the_timer() {
        let mut s = stage(&[("window_secs", "10"), ("time", "processing")]);
        let mut b = batch(&[(1, "x"), (2, "x")]);
        b.context.now_ms = 5_000;
        s.process_batch(&b);
        let ctx = |now_ms| Context {
            now_ms,
            topic: "in".into(),
            partition: 0,
        };
        assert!(s.on_timer(&ctx(9_999)).is_empty());
        let side = counts(&s.on_timer(&ctx(10_000)));
        assert_eq!(side[0].0, "0/x/0");
        assert!(side[0].1.contains(r#""count":2"#));
    }
}
