//! The pipeline's routes: the named outputs stages may send records to
//! (contract 0.2.0), numbered for the columns the chain keeps per record.
//!
//! Route number 0 is `default`, the pipeline's output topic; the names the
//! operator maps to topics (`[output] routes`) follow in name order. A
//! record carries a bit per route number (at most 64), so routing costs a
//! word per record, not a topic string.

use std::collections::BTreeMap;

use super::StageError;

/// The name of route 0: the pipeline's output topic.
pub const DEFAULT_ROUTE: &str = "default";

/// The most routes a pipeline may map (route 0 included): one bit each.
pub const MAX_ROUTES: usize = 64;

/// The route number of a declared name no topic is mapped to: a batch
/// that routes a record there fails under the stage's policy.
pub const UNMAPPED: u8 = u8::MAX;

/// Route names by number, with the topic each goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// (name, topic) by route number; number 0 is `default`.
    routes: Vec<(String, String)>,
}

impl RouteTable {
    /// The routes of a pipeline writing to `output`, with `mapped` (name ->
    /// topic, without `default`).
    pub fn new(output: &str, mapped: &BTreeMap<String, String>) -> Self {
        let mut routes = vec![(DEFAULT_ROUTE.to_owned(), output.to_owned())];
        routes.extend(
            mapped
                .iter()
                .filter(|(name, _)| name.as_str() != DEFAULT_ROUTE)
                .map(|(n, t)| (n.clone(), t.clone())),
        );
        Self { routes }
    }

    /// Route numbers and (name, topic), number 0 first.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &str, &str)> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, (n, t))| (i, n.as_str(), t.as_str()))
    }

    /// The number of routes, `default` included.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Always false: `default` is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The topics of routes 1.. (the mapped ones), by number - 1.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.routes[1..].iter().map(|(_, t)| t.as_str())
    }

    /// The route numbers of the names stage `stage` declared, by its
    /// declaration order. A name the operator did not map is an error when
    /// `strict` (a reload: the new stage is refused), else [`UNMAPPED`]
    /// (at start: batches that use it fail under the stage's policy).
    pub fn numbers(
        &self,
        stage: &str,
        declared: &[String],
        strict: bool,
    ) -> Result<Vec<u8>, StageError> {
        declared
            .iter()
            .map(|name| match self.routes.iter().position(|(n, _)| n == name) {
                Some(i) => Ok(i as u8),
                None if strict => Err(StageError::UnmappedRoute {
                    stage: stage.to_owned(),
                    route: name.clone(),
                }),
                None => {
                    tracing::warn!(stage, route = %name, mapped = ?self.routes.iter().map(|(n, _)| n).collect::<Vec<_>>(), "the stage declares a route no topic is mapped to: batches that route records there fail under the stage's policy; map it with --route NAME=TOPIC");
                    Ok(UNMAPPED)
                }
            })
            .collect()
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new("", &BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_route_zero_and_mapped_names_follow_in_order() {
        let mapped = BTreeMap::from([
            ("suspicious".to_owned(), "sus".to_owned()),
            ("eu".to_owned(), "logins-eu".to_owned()),
        ]);
        let t = RouteTable::new("out", &mapped);
        let all: Vec<_> = t.iter().collect();
        assert_eq!(
            all,
            [
                (0, "default", "out"),
                (1, "eu", "logins-eu"),
                (2, "suspicious", "sus")
            ]
        );
        let declared = ["suspicious".to_owned(), "default".to_owned()];
        assert_eq!(t.numbers("router", &declared, true).unwrap(), [2, 0]);
        let e = t.numbers("router", &["us".to_owned()], true).unwrap_err();
        assert!(e.to_string().contains("us"), "{e}");
        let lenient = t.numbers("router", &["us".to_owned()], false).unwrap();
        assert_eq!(lenient, [UNMAPPED]);
        assert_eq!(t.topics().collect::<Vec<_>>(), ["logins-eu", "sus"]);
    }
}
