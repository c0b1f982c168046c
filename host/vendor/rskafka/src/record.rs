use chrono::{DateTime, Utc};

/// pipeline-host patch 14: the cap on what one fetch response may inflate to.
pub use crate::protocol::record::inflation::{DEFAULT_LIMIT as DEFAULT_INFLATION_LIMIT, set_limit as set_inflation_limit};

/// High-level record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
    pub timestamp: DateTime<Utc>,
}

impl Record {
    /// Returns the approximate uncompressed size of this [`Record`]
    pub fn approximate_size(&self) -> usize {
        self.key.as_ref().map(|k| k.len()).unwrap_or_default()
            + self.value.as_ref().map(|v| v.len()).unwrap_or_default()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// pipeline-host patch: a record's headers as Kafka has them, an ordered
/// list of (key, value) byte strings. Keys may repeat and need not be UTF-8
/// (rskafka kept a `BTreeMap<String, _>`, which collapsed repeated keys,
/// reordered them and failed the whole fetch on a non-UTF-8 key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(Vec<u8>, Vec<u8>)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of the last header named `key` (as Kafka's Java client's
    /// `lastHeader`).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_slice() == key.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// Appends a header (a repeated key is kept as another entry).
    pub fn push(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.push((key.into(), value.into()));
    }

    /// Every header, in record order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Keeps the headers `keep` says yes to, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Vec<u8>>, V: Into<Vec<u8>>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl<K: Into<Vec<u8>>, V: Into<Vec<u8>>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl IntoIterator for Headers {
    type Item = (Vec<u8>, Vec<u8>);
    type IntoIter = std::vec::IntoIter<(Vec<u8>, Vec<u8>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Into<Vec<u8>>, V: Into<Vec<u8>>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(headers: [(K, V); N]) -> Self {
        headers.into_iter().collect()
    }
}

/// Records already in Kafka's record-batch encoding (v2 record format), ready
/// to be produced without building a [`Record`] per message.
///
/// pipeline-host patch: its sink encodes output records straight from its
/// own buffers into this, and a produce retry reuses the same bytes (through
/// an `Arc`) instead of cloning every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedRecords {
    bytes: Vec<u8>,
    count: i32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl EncodedRecords {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one record. `headers` are (name, value) pairs; a name must be
    /// UTF-8 to be read back as a string by other clients.
    pub fn push<'a>(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
        timestamp_ms: i64,
    ) {
        if self.count == 0 {
            self.first_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let ts_delta = timestamp_ms - self.first_timestamp;
        let offset_delta = i64::from(self.count);
        let bytes_len = |b: Option<&[u8]>| match b {
            Some(b) => varint_len(b.len() as i64) + b.len(),
            None => varint_len(-1),
        };
        let mut n_headers = 0usize;
        let mut headers_len = 0usize;
        for (k, v) in headers.clone() {
            n_headers += 1;
            headers_len += bytes_len(Some(k)) + bytes_len(Some(v));
        }
        let body = 1
            + varint_len(ts_delta)
            + varint_len(offset_delta)
            + bytes_len(key)
            + bytes_len(value)
            + varint_len(n_headers as i64)
            + headers_len;
        let out = &mut self.bytes;
        out.reserve(body + 5);
        put_varint(out, body as i64);
        out.push(0); // attributes
        put_varint(out, ts_delta);
        put_varint(out, offset_delta);
        put_bytes(out, key);
        put_bytes(out, value);
        put_varint(out, n_headers as i64);
        for (k, v) in headers {
            put_bytes(out, Some(k));
            put_bytes(out, Some(v));
        }
        self.count += 1;
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there is no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size in bytes (before compression).
    pub fn encoded_size(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn count(&self) -> i32 {
        self.count
    }

    pub(crate) fn timestamps(&self) -> (i64, i64) {
        (self.first_timestamp, self.max_timestamp)
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn varint_len(n: i64) -> usize {
    let bits = 64 - (zigzag(n) | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, n: i64) {
    let mut v = zigzag(n);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varint(out, -1),
    }
}

/// Record that has offset information attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAndOffset {
    pub record: Record,
    pub offset: i64,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn test_approximate_size() {
        let record = Record {
            key: Some(vec![0; 23]),
            value: Some(vec![0; 45]),
            headers: vec![("a".to_string(), vec![0; 5]), ("b".to_string(), vec![0; 7])]
                .into_iter()
                .collect(),
            timestamp: Utc.timestamp_millis_opt(1337).unwrap(),
        };

        assert_eq!(record.approximate_size(), 23 + 45 + 1 + 5 + 1 + 7);
    }
}
