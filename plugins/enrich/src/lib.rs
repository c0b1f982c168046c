//! Default stage `enrich`: appends `processed_timestamp` and `login_time`.
//!
//! - `processed_timestamp`: integer epoch seconds of the host's clock when
//!   the batch was processed (`now` of the batch context; stages have no
//!   clock of their own).
//! - `login_time`: the event's `timestamp` as RFC 3339 UTC, e.g.
//!   `"1694479551"` -> `"2023-09-12T00:45:51Z"`.
//!
//! What each kind of `timestamp` gets:
//!
//! | `timestamp`                                  | result                            |
//! |----------------------------------------------|-----------------------------------|
//! | string of epoch seconds, `"1694479551"`      | `login_time` set                  |
//! | integer number, `1694479551`                 | `login_time` set                  |
//! | missing                                      | invalid (see below)               |
//! | `null`, fraction, exponent, text, negative, after year 9999 | invalid            |
//!
//! An invalid timestamp follows `on_invalid_timestamp`: `fail` (default)
//! sends the event to the dead-letter topic with the reason; `null` keeps it
//! with `"login_time": null` and `"login_time_error"` saying why.
//!
//! Settings: `on_invalid_timestamp` = `fail` | `null`.

use stage_sdk::time::{epoch_seconds, rfc3339};
use stage_sdk::{Config, Context, Fields, Outcome, Record, Stage, export_stage};

/// The enricher.
#[derive(Debug)]
pub struct Enrich {
    fail_invalid: bool,
}

impl Stage for Enrich {
    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["on_invalid_timestamp"])?;
        let policy = config.choice("on_invalid_timestamp", &["fail", "null"], "fail")?;
        Ok(Self {
            fail_invalid: policy == "fail",
        })
    }

    fn process(&mut self, record: &Record<'_>, context: &Context) -> Outcome {
        let fields = Fields::new().int("processed_timestamp", context.now_ms.div_euclid(1000));
        match epoch_seconds(record, "timestamp") {
            Ok(secs) => Outcome::Append(fields.str("login_time", &rfc3339(secs))),
            Err(reason) if self.fail_invalid => Outcome::Fail(reason),
            Err(reason) => {
                Outcome::Append(fields.null("login_time").str("login_time_error", &reason))
            }
        }
    }
}

export_stage!(Enrich);
