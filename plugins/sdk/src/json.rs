//! Lazy JSON access for stages: find a top-level member of an object without
//! building a tree, read strings and integers, and write small JSON
//! fragments.
//!
//! The host guarantees that every value a stage receives is a valid JSON
//! object (see `wit/stage.wit`), so the scanner here is written for speed on
//! valid input: it never reads out of bounds and returns `None` rather than
//! panicking on anything unexpected, but it does not re-validate.

use std::borrow::Cow;

/// A raw JSON value: the exact bytes of one value inside an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(pub &'a [u8]);

/// The JSON type of a [`Raw`] value, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `"..."`
    String,
    /// `-1.5e3`
    Number,
    /// `true` / `false`
    Bool,
    /// `null`
    Null,
    /// `{...}`
    Object,
    /// `[...]`
    Array,
}

impl<'a> Raw<'a> {
    /// The value's JSON type.
    pub fn kind(&self) -> Kind {
        match self.0.first() {
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            _ => Kind::Number,
        }
    }

    /// The value as text if it is a JSON string, unescaped. Borrowed when the
    /// string has no escapes (the common case).
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let inner = self.0.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if !inner.contains(&b'\\') {
            return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
        }
        unescape(inner).map(Cow::Owned)
    }

    /// The value as an integer if it is a JSON number without fraction or
    /// exponent that fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        parse_i64(self.0)
    }

    /// True for JSON `null`.
    pub fn is_null(&self) -> bool {
        self.0 == b"null"
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Parses an optionally negative run of ASCII digits (no sign `+`, no
/// fraction, no exponent, no surrounding space) into an `i64`.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let (neg, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if neg { -n } else { n })
}

/// Returns the value of the top-level member `name` of the JSON object
/// `object`, or `None` if the object has no such member (or `object` is not
/// an object). When a name occurs twice, the last occurrence wins, as in
/// most JSON parsers.
pub fn field<'a>(object: &'a [u8], name: &str) -> Option<Raw<'a>> {
    let mut it = members(object);
    let mut found = None;
    while let Some((member, value)) = it.next() {
        if member.matches(name) {
            found = Some(value);
            // Only a later member of the same name could change the answer,
            // and its name would be a quoted string: when the rest holds
            // neither `"name"` nor any escape, stop here instead of walking
            // the remaining members (two SIMD scans instead of a parse).
            let rest = &object[it.pos..];
            if memchr::memchr(b'\\', rest).is_none() && !occurs_quoted(rest, name.as_bytes()) {
                return found;
            }
        }
    }
    found
}

/// [`field`] for a member that is usually near the end of the event, such
/// as one an earlier stage appended (`anomaly`, for a router): the same
/// answer, found from the last occurrence of the name. For a member near
/// the start it costs a little more than [`field`] (a search from the end
/// before the walk).
pub fn field_near_end<'a>(object: &'a [u8], name: &str) -> Option<Raw<'a>> {
    match field_from_last(object, name) {
        Some(found) => found,
        None => field(object, name),
    }
}

/// [`field`] without walking the members before the answer: the last
/// `"name"` in the text is found from the end, and it is the answer when it
/// is a member name at the top level (the members after it parse as
/// members and end at the object's closing brace). Appended members are
/// last, so a stage reading what an earlier stage appended skips the whole
/// event. In valid JSON a match whose opening quote is not escaped is a
/// whole string token (its closing quote follows a letter of the name, so
/// it is not escaped either), wherever escapes are. `None` when this
/// cannot decide (a match whose opening quote is escaped, a name that could
/// be structural text, a match in the first half or a nested one): the
/// caller walks the members.
fn field_from_last<'a>(object: &'a [u8], name: &str) -> Option<Option<Raw<'a>>> {
    let n = name.as_bytes();
    // An unescaped quote delimits a string, so `"name"` is a whole string
    // token unless `name` is only what may sit between two tokens.
    let between = |b: &u8| {
        matches!(
            b,
            b' ' | b'\t' | b'\r' | b'\n' | b',' | b':' | b'{' | b'}' | b'[' | b']'
        )
    };
    if n.is_empty() || n.contains(&b'"') || n.contains(&b'\\') || n.iter().all(between) {
        return None;
    }
    let start = skip_ws(object, 0);
    if object.get(start) != Some(&b'{') {
        return None;
    }
    let Some(q) = rfind_quoted(object, n) else {
        // No `"name"` anywhere: no such member.
        return Some(None);
    };
    // An escaped opening quote (an odd run of backslashes before it): the
    // match is text inside a string.
    let backslashes = object[..q]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    if backslashes % 2 == 1 {
        return None;
    }
    // A member in the first half is found sooner by the walk from the
    // start (which also stops early); this pays off for the later ones.
    if q < object.len() / 2 {
        return None;
    }
    let mut pos = skip_ws(object, q + n.len() + 2);
    if object.get(pos) != Some(&b':') || q <= start {
        return None;
    }
    pos = skip_ws(object, pos + 1);
    let end = value_end(object, pos)?;
    let value = Raw(&object[pos..end]);
    // The members after it, then the closing brace and nothing else: top
    // level. A nested match stops at its own object's brace.
    let mut rest = Members {
        buf: object,
        pos: end,
        done: false,
    };
    while rest.next().is_some() {}
    let close = skip_ws(object, rest.pos);
    (object.get(close) == Some(&b'}') && skip_ws(object, close + 1) == object.len())
        .then_some(Some(value))
}

/// The position of the last `"name"` (quotes included) in `hay`: the
/// quotes from the end (a SIMD reverse scan), each checked as the closing
/// quote of `"name"`. A member an earlier stage appended is behind the
/// first quote or two, where a substring searcher would first pay its
/// setup on every record.
fn rfind_quoted(hay: &[u8], name: &[u8]) -> Option<usize> {
    let len = name.len() + 2;
    memchr::memrchr_iter(b'"', hay).find_map(|close| {
        let open = (close + 1).checked_sub(len)?;
        (hay[open] == b'"' && &hay[open + 1..close] == name).then_some(open)
    })
}

/// True when `"name"` (quotes included) occurs in `hay`.
///
/// Building a SIMD substring finder costs more than running it over one
/// event, and stages ask for the same few names on every record, so the
/// finders of up to [`FINDER_CACHE`] names are kept per thread.
fn occurs_quoted(hay: &[u8], name: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::cell::RefCell;
    thread_local! {
        static FINDERS: RefCell<Vec<(Box<[u8]>, Finder<'static>)>> = const { RefCell::new(Vec::new()) };
    }
    FINDERS.with(|finders| {
        let mut finders = finders.borrow_mut();
        if let Some((_, f)) = finders.iter().find(|(n, _)| **n == *name) {
            return f.find(hay).is_some();
        }
        let mut needle = Vec::with_capacity(name.len() + 2);
        needle.push(b'"');
        needle.extend_from_slice(name);
        needle.push(b'"');
        let finder = Finder::new(&needle).into_owned();
        let found = finder.find(hay).is_some();
        if finders.len() < FINDER_CACHE {
            finders.push((name.into(), finder));
        }
        found
    })
}

/// Names whose finders [`occurs_quoted`] keeps per thread.
const FINDER_CACHE: usize = 32;

/// A member name as it appears in the object, without its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name<'a>(pub &'a [u8]);

impl Name<'_> {
    /// Compares with `name`, unescaping only when the member name has
    /// escapes.
    pub fn matches(&self, name: &str) -> bool {
        // An escape sequence is longer than the character it stands for, so
        // only a longer raw name can be an escaped spelling of `name`.
        self.0 == name.as_bytes()
            || (self.0.len() > name.len()
                && self.0.contains(&b'\\')
                && unescape(self.0).is_some_and(|n| n == name))
    }
}

/// Iterates over the top-level members of a JSON object.
pub fn members(object: &[u8]) -> Members<'_> {
    let mut pos = skip_ws(object, 0);
    let ok = object.get(pos) == Some(&b'{');
    pos += 1;
    Members {
        buf: object,
        pos,
        done: !ok,
    }
}

/// Iterator returned by [`members`].
#[derive(Debug)]
pub struct Members<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Iterator for Members<'a> {
    type Item = (Name<'a>, Raw<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if item.is_none() {
            self.done = true;
        }
        item
    }
}

impl<'a> Members<'a> {
    fn step(&mut self) -> Option<(Name<'a>, Raw<'a>)> {
        let buf = self.buf;
        let mut pos = skip_ws(buf, self.pos);
        if buf.get(pos) == Some(&b',') {
            pos = skip_ws(buf, pos + 1);
        }
        if buf.get(pos) != Some(&b'"') {
            return None; // `}` or malformed
        }
        let name_end = string_end(buf, pos)?;
        let name = Name(&buf[pos + 1..name_end - 1]);
        pos = skip_ws(buf, name_end);
        if buf.get(pos) != Some(&b':') {
            return None;
        }
        pos = skip_ws(buf, pos + 1);
        let value_end = value_end(buf, pos)?;
        let value = Raw(&buf[pos..value_end]);
        self.pos = value_end;
        Some((name, value))
    }
}

fn skip_ws(buf: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = buf.get(pos) {
        pos += 1;
    }
    pos
}

/// `start` is at an opening quote; returns the index just past the closing
/// quote.
fn string_end(buf: &[u8], start: usize) -> Option<usize> {
    let mut pos = start + 1;
    loop {
        let rel = memchr::memchr2(b'"', b'\\', buf.get(pos..)?)?;
        pos += rel;
        if buf[pos] == b'\\' {
            pos += 2;
        } else {
            return Some(pos + 1);
        }
    }
}

/// `start` is at the first byte of a value; returns the index just past it.
fn value_end(buf: &[u8], start: usize) -> Option<usize> {
    match buf.get(start)? {
        b'"' => string_end(buf, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut pos = start;
            while pos < buf.len() {
                match buf[pos] {
                    b'"' => {
                        pos = string_end(buf, pos)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(pos + 1);
                        }
                    }
                    _ => {}
                }
                pos += 1;
            }
            None
        }
        _ => {
            let rel = buf[start..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(buf.len() - start);
            (rel > 0).then_some(start + rel)
        }
    }
}

/// Unescapes the inside of a JSON string (without quotes).
fn unescape(inner: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let rel = inner[i..].iter().position(|&b| b == b'\\');
        let end = rel.map_or(inner.len(), |r| i + r);
        out.push_str(std::str::from_utf8(&inner[i..end]).ok()?);
        if end == inner.len() {
            break;
        }
        let esc = *inner.get(end + 1)?;
        i = end + 2;
        match esc {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let hi = hex4(inner.get(i..i + 4)?)?;
                i += 4;
                let c = if (0xD800..0xDC00).contains(&hi) {
                    if inner.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(inner.get(i + 2..i + 6)?)?;
                    i += 6;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                } else {
                    char::from_u32(hi)?
                };
                out.push(c);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn hex4(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
}

/// Writes `value` in decimal (no formatting machinery: this runs once per
/// record in stages).
pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(decimal(value, &mut [0u8; 20]));
}

/// `value` in decimal, written into the end of `buf`.
pub fn decimal(value: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = value.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Appends `s` to `out` as a quoted, escaped JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Builds the JSON object fragment a stage appends to an event
/// (`{"a":1,"b":"x"}`), without an intermediate tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    buf: Vec<u8>,
}

impl Fields {
    /// An empty fragment, with room for a few members so that building one
    /// costs one allocation.
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(96),
        }
    }

    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        self.buf.push(if self.buf.is_empty() { b'{' } else { b',' });
        write_str(&mut self.buf, name);
        self.buf.push(b':');
        &mut self.buf
    }

    /// Adds a string member.
    pub fn str(mut self, name: &str, value: &str) -> Self {
        let buf = self.key(name);
        write_str(buf, value);
        self
    }

    /// Adds an integer member.
    pub fn int(mut self, name: &str, value: i64) -> Self {
        write_i64(self.key(name), value);
        self
    }

    /// Adds a boolean member.
    pub fn bool(mut self, name: &str, value: bool) -> Self {
        let buf = self.key(name);
        buf.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Adds a `null` member.
    pub fn null(mut self, name: &str) -> Self {
        self.key(name).extend_from_slice(b"null");
        self
    }

    /// Adds an array-of-strings member.
    pub fn str_list<'s>(mut self, name: &str, values: impl IntoIterator<Item = &'s str>) -> Self {
        let buf = self.key(name);
        buf.push(b'[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            write_str(buf, v);
        }
        buf.push(b']');
        self
    }

    /// True when no member was added.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The fragment as a JSON object.
    pub fn into_bytes(mut self) -> Vec<u8> {
        if self.buf.is_empty() {
            self.buf.push(b'{');
        }
        self.buf.push(b'}');
        self.buf
    }
}

/// Merges the members of the JSON object `fragment` into the JSON object
/// `event`, writing the result to `out`: members of `fragment` come after the
/// existing ones, and an existing top-level member with the same name as a
/// fragment member is removed first. Returns `None` if either is not an
/// object.
pub fn merge_into(out: &mut Vec<u8>, event: &[u8], fragment: &[u8]) -> Option<()> {
    let new: Vec<(Name<'_>, Raw<'_>)> = members(fragment).collect();
    let start = skip_ws(fragment, 0);
    if fragment.get(start) != Some(&b'{') {
        return None;
    }
    let ev_start = skip_ws(event, 0);
    if event.get(ev_start) != Some(&b'{') {
        return None;
    }
    if new.is_empty() {
        out.extend_from_slice(event);
        return Some(());
    }
    let clash = may_clash(event, &new)
        && members(event).any(|(n, _)| new.iter().any(|(m, _)| same_name(n, *m)));
    let mut first = true;
    if clash {
        out.push(b'{');
        for (n, v) in members(event) {
            if !new.iter().any(|(m, _)| same_name(n, *m)) {
                write_member(out, &mut first, n, v);
            }
        }
    } else {
        // Fast path: copy the event up to its closing brace.
        let close = event.iter().rposition(|&b| b == b'}')?;
        let body = &event[..close];
        out.extend_from_slice(body);
        first = body[ev_start + 1..]
            .iter()
            .all(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    }
    for (n, v) in &new {
        write_member(out, &mut first, *n, *v);
    }
    out.push(b'}');
    Some(())
}

/// False when no member of `new` can share a name with a member of
/// `event`: none of the names occurs as a quoted string anywhere in the
/// event, and nothing is escaped (an escaped name could spell the same name
/// with other bytes). Saves parsing the event's members on every append.
fn may_clash(event: &[u8], new: &[(Name<'_>, Raw<'_>)]) -> bool {
    if memchr::memchr(b'\\', event).is_some() || new.iter().any(|(n, _)| n.0.contains(&b'\\')) {
        return true;
    }
    // Every name in the event is a quoted string: look for each new name,
    // quotes included, with one SIMD substring search per name. A match
    // inside a value only sends the merge to the exact member-by-member
    // check.
    new.iter().any(|(name, _)| occurs_quoted(event, name.0))
}

/// Writes `"name":value`, preceded by a comma unless it is the first.
fn write_member(out: &mut Vec<u8>, first: &mut bool, name: Name<'_>, value: Raw<'_>) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.0);
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.0);
}

fn same_name(a: Name<'_>, b: Name<'_>) -> bool {
    if a.0 == b.0 {
        return true;
    }
    if a.0.contains(&b'\\') || b.0.contains(&b'\\') {
        return unescape(a.0).is_some() && unescape(a.0) == unescape(b.0);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk [`field`] falls back to, as the reference.
    fn walked<'a>(object: &'a [u8], name: &str) -> Option<Raw<'a>> {
        members(object)
            .filter(|(m, _)| m.matches(name))
            .last()
            .map(|(_, v)| v)
    }

    #[test]
    fn the_search_from_the_last_name_agrees_with_the_walk() {
        let parts = [
            r#""a":1"#,
            r#""anomaly":true"#,
            r#""anomaly":{"anomaly":2}"#,
            r#""x":{"anomaly":3}"#,
            r#""y":[{"anomaly":4},"anomaly"]"#,
            r#""s":"anomaly""#,
            r#""t":"a \"anomaly\" b""#,
            r#""anomaly" : [1, {"b":"}"}]"#,
            r#""b":"{[""#,
            r#""":0"#,
            r#""u":"x\\","anomaly":5"#,
            r#""v":"q\"anomaly\":1 \\""#,
        ];
        let mut tried = 0;
        for a in 0..parts.len() {
            for b in 0..parts.len() {
                for c in 0..parts.len() {
                    let object = format!("{{{}, {},{}}} ", parts[a], parts[b], parts[c]);
                    for name in ["anomaly", "a", "x", "b", "missing", ""] {
                        let got = field_near_end(object.as_bytes(), name);
                        assert_eq!(got, walked(object.as_bytes(), name), "{name} in {object}");
                        tried += 1;
                    }
                }
            }
        }
        assert_eq!(tried, 12 * 12 * 12 * 6);
        // A decided case really skips the walk: a top-level last member.
        let o = br#"{"aaaaaaaaaaaaaaaa":1,"anomaly":false}"#;
        assert_eq!(
            field_from_last(br#"{"anomaly":1,"bbbbbbbbbbbbbbbb":2}"#, "anomaly"),
            None
        );
        assert_eq!(field_from_last(o, "anomaly"), Some(Some(Raw(b"false"))));
        assert_eq!(field_from_last(o, "none"), Some(None));
        assert_eq!(field_from_last(br#"{"x":{"anomaly":1}}"#, "anomaly"), None);
    }

    const EVENT: &[u8] = br#"{"user_id": "u1", "nested": {"device_type": "x", "a": [1, "}"]}, "device_type" : "Android", "n": -12, "esc": "a\"b\u00e9", "t": true}"#;

    #[test]
    fn finds_top_level_members_only() {
        assert_eq!(
            field(EVENT, "device_type").unwrap().as_str().unwrap(),
            "Android"
        );
        assert_eq!(field(EVENT, "n").unwrap().as_i64(), Some(-12));
        assert_eq!(field(EVENT, "esc").unwrap().as_str().unwrap(), "a\"bé");
        assert_eq!(field(EVENT, "t").unwrap().kind(), Kind::Bool);
        assert_eq!(field(EVENT, "nested").unwrap().kind(), Kind::Object);
        assert!(field(EVENT, "a").is_none());
        assert!(field(b"[1,2]", "a").is_none());
        assert!(field(b"{}", "a").is_none());
    }

    #[test]
    fn escaped_member_names_match() {
        let ev = br#"{"dev\u0069ce": "ios"}"#;
        assert_eq!(field(ev, "device").unwrap().as_str().unwrap(), "ios");
    }

    #[test]
    fn the_last_of_duplicate_names_wins_on_every_path() {
        // A plain later duplicate, an escaped one, and the name occurring
        // only as a later value (which must not be taken for a member).
        assert_eq!(field(br#"{"a":1,"b":2,"a":3}"#, "a").unwrap().0, b"3");
        assert_eq!(field(br#"{"a":1,"b":2,"\u0061":4}"#, "a").unwrap().0, b"4");
        assert_eq!(field(br#"{"a":1,"b":"a"}"#, "a").unwrap().0, b"1");
        assert_eq!(field(br#"{"a":1,"b":{"a":5}}"#, "a").unwrap().0, b"1");
        let long = "n".repeat(100);
        let ev = format!(r#"{{"{long}":1,"x":0,"{long}":2}}"#);
        assert_eq!(field(ev.as_bytes(), &long).unwrap().0, b"2");
    }

    #[test]
    fn integers_are_written_like_display() {
        for v in [0, 7, -7, 10, 1_694_479_551, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_i64(b"1694479551"), Some(1_694_479_551));
        assert_eq!(parse_i64(b"1.5"), None);
        assert_eq!(parse_i64(b"1e3"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"99999999999999999999"), None);
    }

    #[test]
    fn fields_build_valid_json() {
        let f = Fields::new()
            .str("s", "q\"\n\u{1}")
            .int("i", -3)
            .bool("b", false)
            .null("z")
            .str_list("l", ["x", "y"]);
        let v: serde_json::Value = serde_json::from_slice(&f.into_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"s": "q\"\n\u{1}", "i": -3, "b": false, "z": null, "l": ["x", "y"]})
        );
        assert_eq!(Fields::new().into_bytes(), b"{}");
    }

    fn merged(event: &str, fragment: &str) -> serde_json::Value {
        let mut out = Vec::new();
        merge_into(&mut out, event.as_bytes(), fragment.as_bytes()).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn merge_appends_and_replaces() {
        assert_eq!(
            merged(r#"{"a":1}"#, r#"{"b":2}"#),
            serde_json::json!({"a":1,"b":2})
        );
        assert_eq!(merged(r#" { } "#, r#"{"b":2}"#), serde_json::json!({"b":2}));
        assert_eq!(
            merged(r#"{"a":1,"b":1}"#, r#"{"b":[2]}"#),
            serde_json::json!({"a":1,"b":[2]})
        );
        assert_eq!(merged(r#"{"a":1}"#, r#"{}"#), serde_json::json!({"a":1}));
        let mut out = Vec::new();
        merge_into(&mut out, br#"{"a":1}"#, br#"{"b":2,"a":3}"#).unwrap();
        assert_eq!(out, br#"{"b":2,"a":3}"#);
        assert!(merge_into(&mut out, b"[1]", b"{}").is_none());
        assert!(merge_into(&mut out, b"{}", b"3").is_none());
    }
}
