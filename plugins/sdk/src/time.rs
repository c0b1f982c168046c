//! Time helpers shared by stages: event time read from a JSON field, and
//! RFC 3339 formatting (no clock: stages get time from the host).

use crate::Record;
use crate::json::Kind;

/// Latest second representable as a four-digit-year RFC 3339 time.
pub const MAX_SECONDS: i64 = 253_402_300_799;

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
    // Written digit by digit: this runs once per event, and the formatting
    // machinery costs more than the arithmetic above.
    let mut out = [0u8; 20];
    let fields = [
        (year / 100, 0),
        (year % 100, 2),
        (month, 5),
        (day, 8),
        (rem / 3600, 11),
        (rem % 3600 / 60, 14),
        (rem % 60, 17),
    ];
    for (v, at) in fields {
        out[at] = b'0' + (v / 10) as u8;
        out[at + 1] = b'0' + (v % 10) as u8;
    }
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'Z'),
    ] {
        out[at] = sep;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the top-level member `field` of `record` as epoch seconds (a
/// string of digits or an integer), or says why it cannot.
pub fn epoch_seconds(record: &Record<'_>, field: &str) -> Result<i64, String> {
    let raw = record
        .field(field)
        .ok_or_else(|| format!("missing field {field}"))?;
    let secs = match raw.kind() {
        Kind::String => raw
            .as_str()
            .and_then(|s| crate::json::parse_i64(s.as_bytes())),
        Kind::Number => raw.as_i64(),
        _ => None,
    };
    match secs {
        Some(s) if (0..=MAX_SECONDS).contains(&s) => Ok(s),
        _ => Err(format!(
            "field {field} is not epoch seconds: {}",
            String::from_utf8_lossy(&raw.bytes()[..raw.bytes().len().min(64)])
        )),
    }
}

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
