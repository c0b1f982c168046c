//! Case-insensitive lookups in short lists of settings (device types,
//! locales), the way stages compare an event's field with their
//! configuration: Unicode case folding, but no allocation when the field is
//! ASCII, which it nearly always is.

/// Index of the entry of `folded` equal to `s` lower-cased. The entries must
/// already be lower-cased with [`str::to_lowercase`].
pub fn find_lowercase<S: AsRef<str>>(folded: &[S], s: &str) -> Option<usize> {
    find_folded(folded, s, str::to_lowercase)
}

/// Index of the entry of `folded` equal to `s` upper-cased. The entries must
/// already be upper-cased with [`str::to_uppercase`].
pub fn find_uppercase<S: AsRef<str>>(folded: &[S], s: &str) -> Option<usize> {
    find_folded(folded, s, str::to_uppercase)
}

/// For ASCII `s`, folding either way and comparing equals comparing with
/// ASCII case ignored (the entries are folded already); otherwise fold.
fn find_folded<S: AsRef<str>>(folded: &[S], s: &str, fold: fn(&str) -> String) -> Option<usize> {
    if s.is_ascii() {
        folded
            .iter()
            .position(|k| k.as_ref().eq_ignore_ascii_case(s))
    } else {
        let s = fold(s);
        folded.iter().position(|k| k.as_ref() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_unicode_agree_with_folding_first() {
        let lower = ["android", "straße", "ipad"];
        for s in [
            "Android", "ANDROID", "STRASSE", "Straße", "iPad", "kindle", "ÍPAD",
        ] {
            let folded = s.to_lowercase();
            assert_eq!(
                find_lowercase(&lower, s),
                lower.iter().position(|k| *k == folded),
                "{s}"
            );
        }
        let upper = ["RU", "CN", "İR"];
        for s in ["ru", "Cn", "ir", "İr", "de"] {
            let folded = s.to_uppercase();
            assert_eq!(
                find_uppercase(&upper, s),
                upper.iter().position(|k| *k == folded),
                "{s}"
            );
        }
    }
}
