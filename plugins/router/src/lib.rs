//! Default stage `router`: sends events whose `field` has one of the
//! configured `values` to the route `route`, and lets the others go to the
//! default output (contract 0.2.0 routes).
//!
//! With the defaults it follows `anomaly`: events it flagged
//! (`"anomaly": true`) go to route `suspicious`, which the operator maps to
//! a topic (`--route suspicious=suspicious-logins`); the rest go to the
//! output topic. Routed events still pass through the stages after it.
//!
//! A value matches the field's JSON text (`true`, `42`) or, for a JSON
//! string, its text (`RU` matches `"RU"`). An event without the field, or
//! whose field matches no value, is kept on its current routes.
//!
//! Settings:
//! - `field`: top-level member to look at (default `anomaly`).
//! - `values`: comma-separated values that route (default `true`).
//! - `route`: route name (default `suspicious`).
//! - `copy_to_default`: `true` to also keep a copy on the default output
//!   (fan-out), `false` (default) to send matching events to the route
//!   only.

use stage_sdk::{Config, Context, Outcome, Record, Route, Stage, export_stage};

/// The router: the member, the values that route, and where.
#[derive(Debug)]
pub struct Router {
    field: String,
    values: Vec<String>,
    route: Route,
    /// The default output too, when copies are kept there.
    default: Option<Route>,
}

impl Stage for Router {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["field", "values", "route", "copy_to_default"])?;
        let field = config.get("field").unwrap_or("anomaly").to_owned();
        if field.is_empty() {
            return Err("setting field: empty; name the member to route by".into());
        }
        let values = config.list("values").unwrap_or_else(|| vec!["true".into()]);
        if values.is_empty() {
            return Err("setting values: the list is empty, so nothing would be routed".into());
        }
        let route = config.route(config.get("route").unwrap_or("suspicious"))?;
        let copy = config.choice("copy_to_default", &["true", "false"], "false")? == "true";
        let default = if copy {
            Some(config.route("default")?)
        } else {
            None
        };
        Ok(Self {
            field,
            values,
            route,
            default,
        })
    }

    fn process(&mut self, record: &Record<'_>, _: &Context) -> Outcome {
        // The default field, `anomaly`, is appended by an earlier stage:
        // found from the end of the event.
        let Some(raw) = record.field_near_end(&self.field) else {
            return Outcome::Keep;
        };
        let text = raw.as_str();
        let matched = self
            .values
            .iter()
            .any(|v| v.as_bytes() == raw.bytes() || text.as_deref() == Some(v.as_str()));
        match (matched, self.default) {
            (false, _) => Outcome::Keep,
            (true, None) => Outcome::Keep.to(self.route),
            (true, Some(default)) => Outcome::Keep.to(self.route).to(default),
        }
    }
}

export_stage!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use stage_sdk::batch::{BatchBuilder, OutcomeRef};
    use stage_sdk::{BatchStage, Config};

    fn run(config: &[(&str, &str)], events: &[&str]) -> (Vec<String>, Vec<Vec<u16>>) {
        let cfg = Config::new(config.iter().copied());
        let mut stage = <Router as Stage>::init(&cfg).unwrap();
        let mut b = BatchBuilder::default();
        for (i, e) in events.iter().enumerate() {
            b.push(e.as_bytes(), None, [], 0, i as i64);
        }
        let batch = b.finish();
        let out = BatchStage::process_batch(&mut stage, &batch);
        let starts = out.check(events.len()).unwrap();
        for i in 0..events.len() {
            assert_eq!(out.get(i, &starts), OutcomeRef::Keep);
        }
        let routes = (0..events.len())
            .map(|i| out.routes_of(i).to_vec())
            .collect();
        (cfg.routes(), routes)
    }

    #[test]
    fn flagged_events_go_to_the_route_and_the_rest_stay() {
        let (names, routes) = run(
            &[],
            &[r#"{"anomaly":true}"#, r#"{"anomaly":false}"#, r#"{"x":1}"#],
        );
        assert_eq!(names, ["suspicious"]);
        assert_eq!(routes, [vec![0], vec![], vec![]]);
    }

    #[test]
    fn strings_match_their_text_and_copies_can_stay_on_default() {
        let (names, routes) = run(
            &[
                ("field", "locale"),
                ("values", "RU,CN"),
                ("route", "watch"),
                ("copy_to_default", "true"),
            ],
            &[r#"{"locale":"CN"}"#, r#"{"locale":"DE"}"#],
        );
        assert_eq!(names, ["watch", "default"]);
        assert_eq!(routes, [vec![0, 1], vec![]]);
    }
}
