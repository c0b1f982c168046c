//! The host's check that a value is one UTF-8 JSON object: every input value
//! before the stages see it, and every fragment or replacement a stage
//! returns. Stages rely on it (`wit/stage.wit` promises valid objects).
//!
//! serde_json validates the structure (`IgnoredAny`, no tree is built), but
//! it skips over the bytes of strings without checking their UTF-8 when it
//! only validates, so UTF-8 is checked first, for the whole value (std's
//! check runs a word at a time over ASCII).
//!
//! (A hand-written single-pass scanner with SIMD string search was tried
//! here and measured slower than serde_json's skipping on these events; the
//! figures are in docs/benchmarks.md.)

/// Checks that `value` is a UTF-8 JSON object, saying what is wrong if not.
pub fn validate_object(value: &[u8]) -> Result<(), String> {
    if let Err(e) = std::str::from_utf8(value) {
        return Err(format!(
            "value is not UTF-8: invalid byte at offset {}",
            e.valid_up_to()
        ));
    }
    let first = value.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => return Err("value is empty".into()),
        Some(b'{') => {}
        Some(_) => {
            // Say whether it is JSON at all.
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(value) {
                    Ok(_) => "value is JSON but not an object".into(),
                    Err(e) => format!("value is not JSON: {e}"),
                },
            );
        }
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(value)
        .map(|_| ())
        .map_err(|e| format!("value is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_wrong() {
        assert!(validate_object(br#" {"a":[1,{"b":null}],"c":"\u00e9"} "#).is_ok());
        let cases: [(&[u8], &str); 5] = [
            (b"", "value is empty"),
            (b"[1]", "JSON but not an object"),
            (br#"{"a":1,}"#, "value is not JSON"),
            (b"{\"a\":\"\xff\"}", "not UTF-8: invalid byte at offset 6"),
            (b"{\"a\":\"caf\xc3\"}", "not UTF-8"),
        ];
        for (value, want) in cases {
            let got = validate_object(value).unwrap_err();
            assert!(got.contains(want), "{got}");
        }
    }
}
