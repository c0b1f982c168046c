//! A stage's configuration: the key/value pairs the host passes to `init`.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::Route;

/// The configuration given to a stage, with helpers that produce the
/// refusal messages the host shows the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: BTreeMap<String, String>,
    /// Route names declared by [`Config::route`], in order.
    routes: RefCell<Vec<String>>,
}

impl Config {
    /// Builds a configuration from key/value pairs; a later duplicate key
    /// wins.
    pub fn new<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            routes: RefCell::default(),
        }
    }

    /// Declares a named output this stage may route records to, and
    /// returns its handle for [`crate::Outcome::to`]. The operator maps the
    /// name to a topic (`[output] routes`); the host refuses to start when
    /// a declared name is not mapped. `default` is the pipeline's output.
    /// Declaring a name twice gives the same route; at most 64 names.
    pub fn route(&self, name: &str) -> Result<Route, String> {
        let mut routes = self.routes.borrow_mut();
        if let Some(i) = routes.iter().position(|r| r == name) {
            return Ok(Route::at(i as u16));
        }
        if name.is_empty() {
            return Err("a route needs a name".into());
        }
        if routes.len() >= Route::MAX {
            return Err(format!(
                "route {name}: a stage may declare at most {} routes",
                Route::MAX
            ));
        }
        routes.push(name.to_owned());
        Ok(Route::at((routes.len() - 1) as u16))
    }

    /// The route names declared so far, in declaration order (what the
    /// stage's `routes` export returns).
    pub fn routes(&self) -> Vec<String> {
        self.routes.borrow().clone()
    }

    /// Refuses keys not in `known`, so a typo is reported instead of
    /// silently ignored.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        let unknown: Vec<&str> = self
            .entries
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "unknown setting(s) {}; this stage accepts: {}",
                unknown.join(", "),
                known.join(", ")
            ))
        }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// A comma-separated list: items are trimmed and empty items skipped.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        self.get(key).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// A comma-separated list of `name:value` pairs.
    pub fn pairs(&self, key: &str) -> Option<Result<Vec<(String, String)>, String>> {
        let items = self.list(key)?;
        Some(
            items
                .iter()
                .map(|item| match item.split_once(':') {
                    Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                        Ok((k.trim().to_owned(), v.trim().to_owned()))
                    }
                    _ => Err(format!(
                        "setting {key}: `{item}` is not of the form name:value"
                    )),
                })
                .collect(),
        )
    }

    /// One of `choices`, or `default` when unset.
    pub fn choice<'c>(
        &self,
        key: &str,
        choices: &[&'c str],
        default: &'c str,
    ) -> Result<&'c str, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => choices.iter().copied().find(|c| *c == v).ok_or_else(|| {
                format!("setting {key}: `{v}` is not one of {}", choices.join(", "))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_pairs_and_choices() {
        let c = Config::new([
            ("l", " a, ,b "),
            ("p", "x:1, y : 2"),
            ("bad", "x"),
            ("c", "two"),
        ]);
        assert_eq!(c.list("l").unwrap(), ["a", "b"]);
        assert_eq!(
            c.pairs("p").unwrap().unwrap(),
            [("x".into(), "1".into()), ("y".into(), "2".into())]
        );
        assert!(c.pairs("bad").unwrap().unwrap_err().contains("name:value"));
        assert_eq!(c.choice("c", &["one", "two"], "one").unwrap(), "two");
        assert_eq!(c.choice("zz", &["one"], "one").unwrap(), "one");
        assert!(c.choice("c", &["one"], "one").is_err());
        assert!(c.only(&["l", "p"]).unwrap_err().contains("bad, c"));
    }
}
