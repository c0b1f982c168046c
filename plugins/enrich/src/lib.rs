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

use stage_sdk::{Config, Context, Fields, Outcome, Record, Stage, export_stage, json::Kind};

/// The enricher.
#[derive(Debug)]
pub struct Enrich {
    fail_invalid: bool,
}

/// Latest second representable as a four-digit-year RFC 3339 time.
const MAX_SECONDS: i64 = 253_402_300_799;

/// Formats epoch seconds as RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`). `secs`
/// must be in `0..=MAX_SECONDS`.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads the event's `timestamp` as epoch seconds, or says why it cannot.
fn login_seconds(record: &Record<'_>) -> Result<i64, String> {
    let raw = record.field("timestamp").ok_or("missing field timestamp")?;
    let secs = match raw.kind() {
        Kind::String => raw
            .as_str()
            .and_then(|s| stage_sdk::json::parse_i64(s.as_bytes())),
        Kind::Number => raw.as_i64(),
        _ => None,
    };
    match secs {
        Some(s) if (0..=MAX_SECONDS).contains(&s) => Ok(s),
        _ => Err(format!(
            "field timestamp is not epoch seconds: {}",
            String::from_utf8_lossy(&raw.bytes()[..raw.bytes().len().min(64)])
        )),
    }
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
        match login_seconds(record) {
            Ok(secs) => Outcome::Append(fields.str("login_time", &rfc3339(secs))),
            Err(reason) if self.fail_invalid => Outcome::Fail(reason),
            Err(reason) => {
                Outcome::Append(fields.null("login_time").str("login_time_error", &reason))
            }
        }
    }
}

export_stage!(Enrich);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_694_479_551), "2023-09-12T00:45:51Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(MAX_SECONDS), "9999-12-31T23:59:59Z");
    }
}
