//! Default stage `android_filter`: keeps events whose `device_type` is one
//! of a configured set (default `android`), compared case-insensitively
//! (Unicode lower case: `Android` and `ANDROID` are kept), and drops the others.
//!
//! An event without `device_type`, or whose `device_type` is not a string
//! (`null`, a number), fails: the filter cannot decide, so the event goes to
//! the dead-letter topic with the reason.
//!
//! Settings:
//! - `device_types`: comma-separated list of device types to keep
//!   (default `android`).

use stage_sdk::case::find_lowercase;
use stage_sdk::{Config, Context, Outcome, Record, Stage, export_stage};

/// The filter, holding the lower-cased device types to keep.
#[derive(Debug)]
pub struct AndroidFilter {
    keep: Vec<String>,
}

impl Stage for AndroidFilter {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["device_types"])?;
        let keep: Vec<String> = config
            .list("device_types")
            .unwrap_or_else(|| vec!["android".into()])
            .into_iter()
            .map(|d| d.to_lowercase())
            .collect();
        if keep.is_empty() {
            return Err(
                "setting device_types: the list is empty, so every event would be dropped".into(),
            );
        }
        Ok(Self { keep })
    }

    fn process(&mut self, record: &Record<'_>, _: &Context) -> Outcome {
        let Some(raw) = record.field("device_type") else {
            return Outcome::fail("missing field device_type");
        };
        let Some(device) = raw.as_str() else {
            return Outcome::fail(format!(
                "field device_type is not a string: {}",
                String::from_utf8_lossy(raw.bytes())
            ));
        };
        match find_lowercase(&self.keep, &device) {
            Some(_) => Outcome::Keep,
            None => Outcome::Drop,
        }
    }
}

export_stage!(AndroidFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::batch::BatchBuilder;

    fn run(config: &[(&str, &str)], events: &[&str]) -> Vec<Outcome> {
        let mut stage = AndroidFilter::init(&Config::new(config.iter().copied())).unwrap();
        let mut b = BatchBuilder::default();
        for (i, e) in events.iter().enumerate() {
            b.push(e.as_bytes(), None, [], 0, i as i64);
        }
        let batch = b.finish();
        batch
            .records()
            .map(|r| stage.process(&r, &batch.context))
            .collect()
    }

    #[test]
    fn keeps_android_in_any_case() {
        let out = run(
            &[],
            &[
                r#"{"device_type":"android"}"#,
                r#"{"device_type":"ANDROID"}"#,
                r#"{"device_type":"iOS"}"#,
            ],
        );
        assert_eq!(out, [Outcome::Keep, Outcome::Keep, Outcome::Drop]);
    }

    #[test]
    fn cannot_decide_without_a_string_device_type() {
        let out = run(
            &[],
            &[
                r#"{"a":1}"#,
                r#"{"device_type":null}"#,
                r#"{"device_type":7}"#,
            ],
        );
        assert_eq!(out[0], Outcome::fail("missing field device_type"));
        assert_eq!(
            out[1],
            Outcome::fail("field device_type is not a string: null")
        );
        assert_eq!(
            out[2],
            Outcome::fail("field device_type is not a string: 7")
        );
    }

    #[test]
    fn configurable_and_refuses_bad_settings() {
        let out = run(
            &[("device_types", "iOS, ipad")],
            &[r#"{"device_type":"ios"}"#, r#"{"device_type":"android"}"#],
        );
        assert_eq!(out, [Outcome::Keep, Outcome::Drop]);
        assert!(AndroidFilter::init(&Config::new([("device_types", " , ")])).is_err());
        assert!(
            AndroidFilter::init(&Config::new([("device_type", "x")]))
                .unwrap_err()
                .contains("unknown setting")
        );
    }
}
