//! What the host understands of a stateful stage's window counts: a side
//! record whose value is a JSON object with `window_start_ms`, the counted
//! value (`app_version`), `count` and the input `partition`, as
//! `version_counts` writes them (see its module doc for the full record).
//! The status page shows the latest window from these; side records of
//! any other shape are not windows and are passed over. Kept beside the
//! stages so that the metrics layer sees typed counts, not stage JSON.

use super::SideOut;

/// One window count of one input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCount {
    /// Window start, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// The counted value (an app version).
    pub value: String,
    /// The input partition it counts.
    pub partition: i64,
    /// Events in the window so far.
    pub count: u64,
}

impl WindowCount {
    /// The window count `side` carries, if it is one.
    pub fn read(side: &SideOut) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(&side.value).ok()?;
        Some(Self {
            start_ms: v["window_start_ms"].as_i64()?,
            value: v["app_version"].as_str()?.to_owned(),
            partition: v["partition"].as_i64()?,
            count: v["count"].as_u64()?,
        })
    }
}
