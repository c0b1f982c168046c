//! Default stage `categorize`: appends `device_category` (Mobile, Tablet,
//! Desktop, ...) from `device_type`, looked up case-insensitively in a
//! table.
//!
//! The default table: android, ios, iphone, mobile -> Mobile; ipad, tablet,
//! android-tablet, kindle -> Tablet; windows, macos, mac, linux, desktop,
//! web, chromeos -> Desktop. A device type not in the table, a missing
//! `device_type` and a non-string one all get the `unknown` category
//! (default `Unknown`): never a failure.
//!
//! Settings:
//! - `table`: `device:Category` pairs, comma-separated; replaces the default.
//! - `extra`: pairs added to the default table (or to `table`).
//! - `unknown`: category for anything else (default `Unknown`).

use stage_sdk::case::find_lowercase;
use stage_sdk::{Config, Context, Fields, Outcome, Record, Stage, export_stage};

/// The categorizer: a lower-cased device type -> category table.
#[derive(Debug)]
pub struct Categorize {
    /// Lower-cased device types, each with its category at the same index.
    devices: Vec<String>,
    categories: Vec<String>,
    unknown: String,
}

const DEFAULT_TABLE: &[(&str, &str)] = &[
    ("android", "Mobile"),
    ("ios", "Mobile"),
    ("iphone", "Mobile"),
    ("mobile", "Mobile"),
    ("ipad", "Tablet"),
    ("tablet", "Tablet"),
    ("android-tablet", "Tablet"),
    ("kindle", "Tablet"),
    ("windows", "Desktop"),
    ("macos", "Desktop"),
    ("mac", "Desktop"),
    ("linux", "Desktop"),
    ("desktop", "Desktop"),
    ("web", "Desktop"),
    ("chromeos", "Desktop"),
];

impl Stage for Categorize {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["table", "extra", "unknown"])?;
        let mut table: Vec<(String, String)> = match config.pairs("table") {
            Some(pairs) => pairs?,
            None => DEFAULT_TABLE
                .iter()
                .map(|(d, c)| ((*d).into(), (*c).into()))
                .collect(),
        };
        if let Some(extra) = config.pairs("extra") {
            table.extend(extra?);
        }
        if table.is_empty() {
            return Err("setting table: the table is empty".into());
        }
        // Later entries win: keep the last mapping of each device type.
        let mut deduped: Vec<(String, String)> = Vec::new();
        for (device, category) in table {
            let device = device.to_lowercase();
            deduped.retain(|(d, _)| *d != device);
            deduped.push((device, category));
        }
        let unknown = config.get("unknown").unwrap_or("Unknown").trim().to_owned();
        if unknown.is_empty() {
            return Err("setting unknown: the category name is empty".into());
        }
        let (devices, categories) = deduped.into_iter().unzip();
        Ok(Self {
            devices,
            categories,
            unknown,
        })
    }

    fn process(&mut self, record: &Record<'_>, _: &Context) -> Outcome {
        let device = record.field("device_type").and_then(|v| v.as_str());
        let category = device
            .and_then(|d| find_lowercase(&self.devices, &d))
            .map_or(self.unknown.as_str(), |i| self.categories[i].as_str());
        Outcome::Append(Fields::new().str("device_category", category))
    }
}

export_stage!(Categorize);
