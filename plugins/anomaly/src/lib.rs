//! Default stage `anomaly`: flags events from suspicious locales.
//!
//! Appends `"anomaly": true|false` to every event, and
//! `"anomaly_reasons": [...]` when flagged. Reasons:
//! - `suspicious locale XX`: `locale` (compared case-insensitively) is in
//!   `suspicious_locales`;
//! - `missing locale`: the event has no string `locale` and
//!   `flag_missing_locale` is `true` (the default).
//!
//! Settings:
//! - `suspicious_locales`: comma-separated locale codes (default
//!   `RU,CN,KP,IR,NG,BY`, an example list: set your own).
//! - `flag_missing_locale`: `true` (default) or `false`.
//! - `route`: a route name (contract 0.2.0); when set, flagged events go
//!   to that route instead of the default output (unset by default).

use stage_sdk::case::find_uppercase;
use stage_sdk::{Config, Context, Fields, Outcome, Record, Route, Stage, export_stage};

/// The flagger, holding upper-cased suspicious locales.
#[derive(Debug)]
pub struct Anomaly {
    suspicious: Vec<String>,
    flag_missing: bool,
    /// Where flagged events go, when set.
    route: Option<Route>,
}

/// The default suspicious locales.
pub const DEFAULT_SUSPICIOUS: &str = "RU,CN,KP,IR,NG,BY";

impl Stage for Anomaly {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["suspicious_locales", "flag_missing_locale", "route"])?;
        let suspicious: Vec<String> = config
            .list("suspicious_locales")
            .unwrap_or_else(|| DEFAULT_SUSPICIOUS.split(',').map(str::to_owned).collect())
            .into_iter()
            .map(|l| l.to_uppercase())
            .collect();
        if suspicious.is_empty() {
            return Err(
                "setting suspicious_locales: the list is empty; remove the stage instead".into(),
            );
        }
        let flag_missing =
            config.choice("flag_missing_locale", &["true", "false"], "true")? == "true";
        let route = match config.get("route") {
            None => None,
            Some(name) => Some(config.route(name)?),
        };
        Ok(Self {
            suspicious,
            flag_missing,
            route,
        })
    }

    fn process(&mut self, record: &Record<'_>, _: &Context) -> Outcome {
        let locale = record.field("locale").and_then(|v| v.as_str());
        let reason = match locale {
            Some(l) => find_uppercase(&self.suspicious, &l)
                .map(|i| format!("suspicious locale {}", self.suspicious[i])),
            None => self.flag_missing.then(|| "missing locale".to_owned()),
        };
        let fields = Fields::new().bool("anomaly", reason.is_some());
        let outcome = Outcome::Append(match &reason {
            Some(r) => fields.str_list("anomaly_reasons", [r.as_str()]),
            None => fields,
        });
        match (reason, self.route) {
            (Some(_), Some(route)) => outcome.to(route),
            _ => outcome,
        }
    }
}

export_stage!(Anomaly);
