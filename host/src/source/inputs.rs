//! Which topics the pipeline reads: a list of names and/or a pattern (a
//! regular expression a whole topic name must match, as Kafka's
//! `subscribe(Pattern)`), checked against the cluster's topic list at
//! start and at every metadata refresh. Topics the pipeline writes (the
//! output, routes, side outputs, dead letters, checkpoints) and Kafka's
//! internal topics are never read through the pattern.

use std::collections::{BTreeMap, BTreeSet};

/// The topics a pipeline reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    names: Vec<String>,
    pattern: Option<regex::Regex>,
    /// Topics this pipeline writes: the pattern never selects them.
    written: BTreeSet<String>,
    /// Dead letters go to `<input>-dlq`: those topics are written too.
    dead_letters_per_input: bool,
}

/// The suffix of an input's own dead-letter topic.
pub const DEAD_LETTER_SUFFIX: &str = "-dlq";

impl Inputs {
    /// `names` and, if given, `pattern` (anchored: the whole name must
    /// match). Refuses a pattern that does not compile, and nothing at all.
    pub fn new(names: Vec<String>, pattern: Option<&str>) -> Result<Self, String> {
        let pattern = pattern
            .map(|p| {
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("input pattern {p:?} is not a regular expression: {e}"))
            })
            .transpose()?;
        if names.is_empty() && pattern.is_none() {
            return Err(
                "no input topic given (--input or [input] topic, or --input-pattern)".into(),
            );
        }
        Ok(Self {
            names,
            pattern,
            written: BTreeSet::new(),
            dead_letters_per_input: true,
        })
    }

    /// These inputs, never selecting `written` through the pattern;
    /// `per_input_dead_letters` says whether `<input>-dlq` topics are
    /// written too.
    pub fn excluding(
        mut self,
        written: impl IntoIterator<Item = String>,
        per_input_dead_letters: bool,
    ) -> Self {
        self.written.extend(written);
        self.dead_letters_per_input = per_input_dead_letters;
        self
    }

    /// The topics named (read whether the pattern matches or not).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The pattern as given, if any.
    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_ref().map(|p| {
            let s = p.as_str();
            &s[4..s.len() - 2]
        })
    }

    /// The inputs among `listed` (topic -> partition count, as the
    /// cluster's metadata lists them): every named topic listed, and every
    /// topic the pattern matches except Kafka's internal ones (`__...`),
    /// those this pipeline writes, and, with per-input dead letters, any
    /// `<input>-dlq` whose `<input>` is named or matches the pattern (the
    /// input existing or not: a deleted input leaves its dead letters).
    pub fn select(&self, listed: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
        let is_input = |t: &str| {
            self.names.iter().any(|n| n == t)
                || self.pattern.as_ref().is_some_and(|p| p.is_match(t))
        };
        let dead_letters = |t: &str| {
            self.dead_letters_per_input && t.strip_suffix(DEAD_LETTER_SUFFIX).is_some_and(is_input)
        };
        let matched = |t: &str| {
            self.pattern.as_ref().is_some_and(|p| p.is_match(t))
                && !t.starts_with("__")
                && !self.written.contains(t)
                && !dead_letters(t)
        };
        listed
            .iter()
            .filter(|(t, n)| **n > 0 && (self.names.contains(t) || matched(t)))
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    }
}

/// The names and the pattern, for logs and errors.
impl std::fmt::Display for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.names.clone();
        if let Some(p) = self.pattern() {
            parts.push(format!("/{p}/"));
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(topics: &[(&str, i32)]) -> BTreeMap<String, i32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn names_and_whole_name_matches_are_read_but_never_what_is_written() {
        let inputs = Inputs::new(vec!["audit".into()], Some("orders-.*"))
            .unwrap()
            .excluding(["orders-out".to_string()], true);
        let all = listed(&[
            ("audit", 2),
            ("orders-eu", 3),
            ("orders-us", 1),
            ("orders-eu-dlq", 1),
            ("orders-out", 4),
            ("my-orders-eu", 1),
            ("__consumer_offsets", 50),
            ("audit-dlq", 1),
            ("orders-gone-dlq", 1),
        ]);
        assert_eq!(
            inputs.select(&all),
            listed(&[("audit", 2), ("orders-eu", 3), ("orders-us", 1)])
        );
        assert_eq!(inputs.pattern(), Some("orders-.*"));
        assert_eq!(inputs.to_string(), "audit,/orders-.*/");
    }

    #[test]
    fn one_dead_letter_topic_lets_the_pattern_match_dlq_names() {
        let inputs = Inputs::new(vec![], Some("a.*"))
            .unwrap()
            .excluding(["all-dead".to_string()], false);
        assert_eq!(
            inputs.select(&listed(&[("a", 1), ("a-dlq", 1), ("all-dead", 1)])),
            listed(&[("a", 1), ("a-dlq", 1)])
        );
    }

    #[test]
    fn nothing_or_a_bad_pattern_is_refused() {
        assert!(Inputs::new(vec![], None).is_err());
        let e = Inputs::new(vec![], Some("orders-(")).unwrap_err();
        assert!(e.contains("orders-("), "{e}");
        assert_eq!(Inputs::new(vec!["x".into()], None).unwrap().names(), ["x"]);
    }
}
