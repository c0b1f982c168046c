//! Deterministic login events in the seed's format, with a chosen share of
//! undecodable and field-missing events. The same seed gives the same
//! events, byte for byte, on every machine.
//!
//! A normal event:
//! `{"user_id": "...", "app_version": "2.3.0", "device_type": "android",
//! "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928",
//! "timestamp": "1694479551"}`; one in twenty carries `timestamp` as a
//! number. Malformed events are truncated JSON, plain text, a JSON array,
//! invalid UTF-8 or an empty value. Field-missing events lack one of the
//! seven fields, or (one in five) carry a garbage `timestamp`.

/// SplitMix64: tiny, fast and good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One item of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What kind of event was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A complete event.
    Normal,
    /// A value that is not a JSON object.
    Malformed,
    /// A JSON object lacking a field, or with a garbage timestamp.
    MissingField,
}

/// One generated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Kafka key: the user id (absent when `user_id` is the missing field).
    pub key: Option<Vec<u8>>,
    /// Kafka value.
    pub value: Vec<u8>,
    /// What kind it is.
    pub kind: EventKind,
}

/// Generator settings.
#[derive(Debug, Clone, Copy)]
pub struct EventMix {
    /// Share of undecodable events, 0..=1.
    pub malformed: f64,
    /// Share of events missing a field, 0..=1.
    pub missing: f64,
    /// Epoch seconds of the first event's timestamp; later ones advance.
    pub start_secs: i64,
    /// Draw `user_id` (the key) from this many users, so keys repeat;
    /// `None` for a new user per event.
    pub users: Option<u64>,
}

impl Default for EventMix {
    fn default() -> Self {
        Self {
            malformed: 0.0,
            missing: 0.0,
            start_secs: 1_694_479_551,
            users: None,
        }
    }
}

const VERSIONS: &[&str] = &["2.3.0", "2.3.1", "2.4.0", "3.0.0"];
const DEVICES: &[&str] = &[
    "android", "android", "android", "android", "Android", "iOS", "iOS", "iOS", "iPad", "windows",
];
const LOCALES: &[&str] = &[
    "US", "GB", "DE", "FR", "IN", "BR", "JP", "RU", "CN", "KP", "IR", "NG", "TX", "CA", "NY", "AU",
];
const FIELDS: &[&str] = &[
    "user_id",
    "app_version",
    "device_type",
    "ip",
    "locale",
    "device_id",
    "timestamp",
];

/// An endless, deterministic stream of events.
#[derive(Debug, Clone)]
pub struct EventStream {
    rng: Rng,
    mix: EventMix,
    n: u64,
}

impl EventStream {
    /// A stream for `seed` and `mix`.
    pub fn new(seed: u64, mix: EventMix) -> Self {
        Self {
            rng: Rng::new(seed),
            mix,
            n: 0,
        }
    }
}

impl Iterator for EventStream {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let rng = &mut self.rng;
        let r = match self.mix.users {
            Some(n) => Rng::new(rng.below(n.max(1)) ^ 0x5eed).next_u64(),
            None => rng.next_u64(),
        };
        let user_id = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r >> 32,
            (r >> 16) & 0xffff,
            r & 0xfff,
            0x8000 | ((r >> 20) & 0x3fff),
            r.rotate_left(17) & 0xffff_ffff_ffff
        );
        let ts = self.mix.start_secs + (self.n / 10) as i64;
        self.n += 1;
        let timestamp = if rng.chance(0.05) {
            ts.to_string()
        } else {
            format!("\"{ts}\"")
        };
        let mut fields: Vec<(&str, String)> = vec![
            ("user_id", format!("\"{user_id}\"")),
            ("app_version", format!("\"{}\"", rng.pick(VERSIONS))),
            ("device_type", format!("\"{}\"", rng.pick(DEVICES))),
            (
                "ip",
                format!(
                    "\"{}.{}.{}.{}\"",
                    rng.below(223) + 1,
                    rng.below(256),
                    rng.below(256),
                    rng.below(256)
                ),
            ),
            ("locale", format!("\"{}\"", rng.pick(LOCALES))),
            (
                "device_id",
                format!(
                    "\"{:03}-{:02}-{:04}\"",
                    rng.below(1000),
                    rng.below(100),
                    rng.below(10000)
                ),
            ),
            ("timestamp", timestamp),
        ];
        let roll = rng.unit();
        let kind = if roll < self.mix.malformed {
            EventKind::Malformed
        } else if roll < self.mix.malformed + self.mix.missing {
            EventKind::MissingField
        } else {
            EventKind::Normal
        };
        let mut key = Some(user_id.clone().into_bytes());
        if kind == EventKind::MissingField {
            if rng.chance(0.2) {
                let garbage = rng.pick(&["\"soon\"", "null", "\"1694479551.5\"", "-5", "{}"]);
                fields[6].1 = (*garbage).to_owned();
            } else {
                let gone = rng.pick(FIELDS);
                fields.retain(|(f, _)| f != gone);
                if *gone == "user_id" {
                    key = None;
                }
            }
        }
        let json = format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let value = if kind == EventKind::Malformed {
            match rng.below(5) {
                0 => json.as_bytes()[..json.len() / 2].to_vec(),
                1 => format!("login {user_id} at {ts}").into_bytes(),
                2 => format!("[\"{user_id}\", {ts}]").into_bytes(),
                3 => {
                    let mut v = json.into_bytes();
                    v[12] = 0xff;
                    v
                }
                _ => Vec::new(),
            }
        } else {
            json.into_bytes()
        };
        Some(Event { key, value, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped_like_the_seed() {
        let a: Vec<_> = EventStream::new(7, EventMix::default()).take(100).collect();
        let b: Vec<_> = EventStream::new(7, EventMix::default()).take(100).collect();
        assert_eq!(a, b);
        for e in &a {
            let v: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 7);
            assert_eq!(
                e.key.as_deref(),
                Some(obj["user_id"].as_str().unwrap().as_bytes())
            );
        }
    }

    #[test]
    fn shares_are_respected() {
        let mix = EventMix {
            malformed: 0.01,
            missing: 0.02,
            ..Default::default()
        };
        let events: Vec<_> = EventStream::new(42, mix).take(20_000).collect();
        let malformed = events
            .iter()
            .filter(|e| e.kind == EventKind::Malformed)
            .count();
        let missing = events
            .iter()
            .filter(|e| e.kind == EventKind::MissingField)
            .count();
        assert!((120..=280).contains(&malformed), "{malformed}");
        assert!((300..=500).contains(&missing), "{missing}");
        for e in events.iter().filter(|e| e.kind == EventKind::Malformed) {
            let parsed = serde_json::from_slice::<serde_json::Value>(&e.value);
            assert!(!matches!(parsed, Ok(serde_json::Value::Object(_))));
        }
    }
}
