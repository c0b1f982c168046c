//! Avro binary <-> the JSON objects stages see.
//!
//! `apache-avro` parses schemas (and resolves a writer's data to a reader
//! schema); the hot path is this module's own: a schema compiled into a
//! flat plan ([`Plan`]) that reads Avro binary straight into JSON text and
//! writes JSON values straight into Avro binary. `apache-avro`'s `Value`
//! would cost an allocation per field both ways, keeps maps in a `HashMap`
//! (so a map would not be written back in its order), and its encoder says
//! only "value does not match schema" where a dead letter must name the
//! field.
//!
//! The JSON mapping (README, "Formats"):
//!
//! | Avro | JSON |
//! |---|---|
//! | null, boolean, int, long, float, double, string | the same JSON value (`NaN` and infinities as strings `"NaN"`, `"Infinity"`, `"-Infinity"`) |
//! | bytes, fixed | a string of one character per byte, U+0000 to U+00FF (Avro's own JSON encoding) |
//! | record | an object with the fields in schema order |
//! | enum | the symbol, a string |
//! | array, map | an array, an object (map entries in written order) |
//! | union of null and one type | `null` or the plain value |
//! | other unions | `null`, or `{"<branch>": value}` with the branch's full name (`"long"`, `"com.acme.Login"`), as Avro's JSON encoding |
//! | decimal | a string of the exact number, `"12.30"` (scale digits kept) |
//! | uuid | a string |
//! | date, time-*, timestamp-*, local-timestamp-* | the underlying int or long |
//! | duration | a fixed of 12 bytes, as above |
//!
//! Written back with the same schema, a decoded value gives the same bytes.

use std::collections::HashMap;
use std::fmt::Write as _;

use apache_avro::Schema;
use serde_json::Value as Json;

/// A schema that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("Avro schema: {0}")]
pub struct SchemaError(pub String);

/// Why bytes did not decode with their writer schema.
#[derive(Debug, thiserror::Error)]
#[error("not Avro of schema {schema}: {why} at byte {at}")]
pub struct DecodeError {
    /// The schema's name.
    pub schema: String,
    /// What was wrong.
    pub why: String,
    /// Where in the payload.
    pub at: usize,
}

/// Why a JSON value does not fit the writer schema: names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {path}: expected {expected}, found {found}")]
pub struct EncodeError {
    /// The field path, `$.device.os` style.
    pub path: String,
    /// The schema's type there.
    pub expected: String,
    /// What the JSON held.
    pub found: String,
}

/// One node of a compiled schema; children are indices into [`Plan::nodes`].
#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(Vec<String>),
    Array(usize),
    Map(usize),
    /// Field names and their nodes, in schema order.
    Record(Vec<(String, usize)>),
    /// Branch full names and nodes; `nullable` when it is null plus one
    /// other branch (then written plain).
    Union {
        branches: Vec<(String, usize)>,
        plain: bool,
    },
    /// Unscaled two's-complement in bytes, or in a fixed of this size.
    Decimal {
        scale: u32,
        fixed: Option<usize>,
    },
    /// A named type defined later (recursion): resolved after compiling.
    Ref(String),
}

/// A compiled Avro schema.
#[derive(Debug, Clone)]
pub struct Plan {
    nodes: Vec<Node>,
    root: usize,
    name: String,
    schema: Schema,
}

impl Plan {
    /// Parses `text` (with `references`, the texts of the named types it
    /// uses, parsed first) and compiles it.
    pub fn parse(text: &str, references: &[String]) -> Result<Self, SchemaError> {
        let schema = if references.is_empty() {
            Schema::parse_str(text).map_err(|e| SchemaError(e.to_string()))?
        } else {
            let refs: Vec<&str> = references.iter().map(String::as_str).collect();
            Schema::parse_str_with_list(text, &refs)
                .map_err(|e| SchemaError(e.to_string()))?
                .0
        };
        Self::compile(schema, references)
    }

    fn compile(schema: Schema, references: &[String]) -> Result<Self, SchemaError> {
        let mut c = Compiler::default();
        // Named types of the references come first, so refs to them resolve.
        if !references.is_empty() {
            let refs: Vec<&str> = references.iter().map(String::as_str).collect();
            for s in Schema::parse_list(refs).map_err(|e| SchemaError(e.to_string()))? {
                c.node(&s)?;
            }
        }
        let root = c.node(&schema)?;
        c.resolve()?;
        let name = match &schema {
            Schema::Record(r) => r.name.fullname(None),
            other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
        };
        Ok(Self {
            nodes: c.nodes,
            root,
            name,
            schema,
        })
    }

    /// The schema's full name (a record's) or kind.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Appends the JSON of the Avro datum `bytes` to `out`.
    pub fn decode(&self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let start = out.len();
        let result = self.read(self.root, &mut r, out).and_then(|()| {
            if r.at == bytes.len() {
                Ok(())
            } else {
                Err(format!("{} bytes left after the datum", bytes.len() - r.at))
            }
        });
        result.map_err(|why| {
            out.truncate(start);
            DecodeError {
                schema: self.name.clone(),
                why,
                at: r.at,
            }
        })
    }

    /// Appends the Avro binary of the JSON text `json` to `out`. The fast
    /// path writes Avro while parsing (no JSON value is built); what it
    /// does not take (unions of several types, anything that does not
    /// fit) goes through [`Plan::encode`], which also names the field of a
    /// misfit. Both write the same bytes.
    pub fn encode_json(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        use serde::de::DeserializeSeed as _;
        let start = out.len();
        let mut de = serde_json::Deserializer::from_slice(json);
        let fast = Seed {
            plan: self,
            node: self.root,
            out: &mut *out,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        if fast.is_ok() {
            return Ok(());
        }
        out.truncate(start);
        let value: Json = serde_json::from_slice(json).map_err(|e| EncodeError {
            path: "$".into(),
            expected: "JSON".into(),
            found: format!("text that is not JSON ({e})"),
        })?;
        self.encode(&value, out)
    }

    /// How many leading fields of this (output) record schema are exactly
    /// the fields of `input`'s record, same names and types: then the Avro
    /// of an input record is the start of the Avro of an output that only
    /// appends members to it. `None` when they differ.
    pub fn prefix_of(&self, input: &Plan) -> Option<usize> {
        let (Node::Record(outs), Node::Record(ins)) =
            (&self.nodes[self.root], &input.nodes[input.root])
        else {
            return None;
        };
        (outs.len() >= ins.len()
            && ins
                .iter()
                .zip(outs)
                .all(|((a, x), (b, y))| a == b && same(input, *x, self, *y, 0)))
        .then_some(ins.len())
    }

    /// Appends the Avro of the record whose first `k` fields are the Avro
    /// `prefix` and whose other fields are the members of the JSON object
    /// `tail`. Fails (for the caller to take the whole path) on anything
    /// the fast path does not take.
    pub fn encode_appended(
        &self,
        prefix: &[u8],
        k: usize,
        tail: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ()> {
        use serde::de::DeserializeSeed as _;
        let Node::Record(fields) = &self.nodes[self.root] else {
            return Err(());
        };
        let start = out.len();
        out.extend_from_slice(prefix);
        let mut de = serde_json::Deserializer::from_slice(tail);
        let written = Tail {
            plan: self,
            fields: &fields[k..],
            out: &mut *out,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        written.map_err(|_| out.truncate(start))
    }

    /// Appends the Avro binary of `value` to `out`.
    pub fn encode(&self, value: &Json, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let mut path = String::from("$");
        self.write(self.root, value, &mut path, out)
            .inspect_err(|_| {
                out.truncate(start);
            })
    }

    fn read(&self, n: usize, r: &mut Reader, out: &mut Vec<u8>) -> Result<(), String> {
        match &self.nodes[n] {
            Node::Null => out.extend_from_slice(b"null"),
            Node::Boolean => match r.byte()? {
                0 => out.extend_from_slice(b"false"),
                1 => out.extend_from_slice(b"true"),
                b => return Err(format!("boolean byte {b}")),
            },
            Node::Int => {
                let v = r.long()?;
                i32::try_from(v).map_err(|_| format!("int {v} out of range"))?;
                write!(Writer(out), "{v}").expect("vec write");
            }
            Node::Long => write!(Writer(out), "{}", r.long()?).expect("vec write"),
            Node::Float => {
                let v = f32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                float(f64::from(v), out, Some(v));
            }
            Node::Double => {
                let v = f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
                float(v, out, None);
            }
            Node::Bytes => {
                let len = r.len()?;
                latin1(r.take(len)?, out);
            }
            Node::String => {
                let len = r.len()?;
                let bytes = r.take(len)?;
                if plain(bytes) {
                    quoted(bytes, out);
                } else {
                    let s = std::str::from_utf8(bytes).map_err(|e| format!("string: {e}"))?;
                    json_string(s, out);
                }
            }
            Node::Fixed(size) => latin1(r.take(*size)?, out),
            Node::Enum(symbols) => {
                let i = r.long()?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| format!("enum index {i} of {} symbols", symbols.len()))?;
                json_string(s, out);
            }
            Node::Array(item) => {
                out.push(b'[');
                let mut first = true;
                r.blocks(|r| {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    self.read(*item, r, out)
                })?;
                out.push(b']');
            }
            Node::Map(value) => {
                out.push(b'{');
                let mut first = true;
                r.blocks(|r| {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    let len = r.len()?;
                    let key =
                        std::str::from_utf8(r.take(len)?).map_err(|e| format!("map key: {e}"))?;
                    json_string(key, out);
                    out.push(b':');
                    self.read(*value, r, out)
                })?;
                out.push(b'}');
            }
            Node::Record(fields) => {
                out.push(b'{');
                for (i, (name, node)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // An Avro name ([A-Za-z_][A-Za-z0-9_]*) needs no escape.
                    quoted(name.as_bytes(), out);
                    out.push(b':');
                    self.read(*node, r, out)?;
                }
                out.push(b'}');
            }
            Node::Union { branches, plain } => {
                let i = r.long()?;
                let (name, node) = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| format!("union branch {i} of {}", branches.len()))?;
                if *plain || matches!(self.nodes[*node], Node::Null) {
                    self.read(*node, r, out)?;
                } else {
                    out.push(b'{');
                    json_string(name, out);
                    out.push(b':');
                    self.read(*node, r, out)?;
                    out.push(b'}');
                }
            }
            Node::Decimal { scale, fixed } => {
                let len = match fixed {
                    Some(size) => *size,
                    None => r.len()?,
                };
                let unscaled = num_bigint::BigInt::from_signed_bytes_be(r.take(len)?);
                out.push(b'"');
                decimal_text(&unscaled, *scale, out);
                out.push(b'"');
            }
            Node::Ref(name) => return Err(format!("unresolved type {name}")),
        }
        Ok(())
    }

    fn write(
        &self,
        n: usize,
        v: &Json,
        path: &mut String,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let wrong = |path: &str, expected: &str| EncodeError {
            path: path.to_owned(),
            expected: expected.to_owned(),
            found: kind(v),
        };
        match (&self.nodes[n], v) {
            (Node::Null, Json::Null) => {}
            (Node::Null, _) => return Err(wrong(path, "null")),
            (Node::Boolean, Json::Bool(b)) => out.push(u8::from(*b)),
            (Node::Boolean, _) => return Err(wrong(path, "boolean")),
            (Node::Int, Json::Number(x)) => match x.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => zigzag(i64::from(i), out),
                None => return Err(wrong(path, "int (32-bit integer)")),
            },
            (Node::Int, _) => return Err(wrong(path, "int")),
            (Node::Long, Json::Number(x)) => match x.as_i64() {
                Some(i) => zigzag(i, out),
                None => return Err(wrong(path, "long (64-bit integer)")),
            },
            (Node::Long, _) => return Err(wrong(path, "long")),
            (Node::Float, _) => match number(v) {
                Some(x) => out.extend_from_slice(&(x as f32).to_le_bytes()),
                None => return Err(wrong(path, "float")),
            },
            (Node::Double, _) => match number(v) {
                Some(x) => out.extend_from_slice(&x.to_le_bytes()),
                None => return Err(wrong(path, "double")),
            },
            (Node::Bytes, Json::String(s)) => match from_latin1(s) {
                Some(b) => {
                    zigzag(b.len() as i64, out);
                    out.extend_from_slice(&b);
                }
                None => return Err(wrong(path, "bytes (characters U+0000-U+00FF)")),
            },
            (Node::Bytes, _) => return Err(wrong(path, "bytes")),
            (Node::String, Json::String(s)) => {
                zigzag(s.len() as i64, out);
                out.extend_from_slice(s.as_bytes());
            }
            (Node::String, _) => return Err(wrong(path, "string")),
            (Node::Fixed(size), Json::String(s)) => match from_latin1(s) {
                Some(b) if b.len() == *size => out.extend_from_slice(&b),
                _ => return Err(wrong(path, &format!("fixed of {size} bytes"))),
            },
            (Node::Fixed(size), _) => return Err(wrong(path, &format!("fixed of {size} bytes"))),
            (Node::Enum(symbols), Json::String(s)) => match symbols.iter().position(|x| x == s) {
                Some(i) => zigzag(i as i64, out),
                None => {
                    return Err(EncodeError {
                        path: path.clone(),
                        expected: format!("one of {}", symbols.join(", ")),
                        found: format!("\"{s}\""),
                    });
                }
            },
            (Node::Enum(_), _) => return Err(wrong(path, "enum symbol (string)")),
            (Node::Array(item), Json::Array(items)) => {
                if !items.is_empty() {
                    zigzag(items.len() as i64, out);
                    for (i, x) in items.iter().enumerate() {
                        let len = path.len();
                        write!(path, "[{i}]").expect("string write");
                        self.write(*item, x, path, out)?;
                        path.truncate(len);
                    }
                }
                out.push(0);
            }
            (Node::Array(_), _) => return Err(wrong(path, "array")),
            (Node::Map(value), Json::Object(entries)) => {
                if !entries.is_empty() {
                    zigzag(entries.len() as i64, out);
                    for (k, x) in entries {
                        zigzag(k.len() as i64, out);
                        out.extend_from_slice(k.as_bytes());
                        let len = path.len();
                        write!(path, "[\"{k}\"]").expect("string write");
                        self.write(*value, x, path, out)?;
                        path.truncate(len);
                    }
                }
                out.push(0);
            }
            (Node::Map(_), _) => return Err(wrong(path, "map (object)")),
            (Node::Record(fields), Json::Object(members)) => {
                for (name, node) in fields {
                    let len = path.len();
                    path.push('.');
                    path.push_str(name);
                    // A missing member writes as null where null is allowed.
                    let x = members.get(name).unwrap_or(&Json::Null);
                    self.write(*node, x, path, out)?;
                    path.truncate(len);
                }
            }
            (Node::Record(_), _) => return Err(wrong(path, "record (object)")),
            (Node::Union { branches, plain }, _) => {
                let (i, node, inner) = self.branch(branches, *plain, v).ok_or_else(|| {
                    let names: Vec<&str> = branches.iter().map(|(n, _)| n.as_str()).collect();
                    wrong(path, &format!("union of {}", names.join(", ")))
                })?;
                zigzag(i as i64, out);
                self.write(node, inner, path, out)?;
            }
            (Node::Decimal { scale, fixed }, Json::String(s)) => {
                let Some(unscaled) = decimal_unscaled(s, *scale) else {
                    return Err(wrong(
                        path,
                        &format!("decimal with at most {scale} fraction digits (string)"),
                    ));
                };
                let bytes = unscaled.to_signed_bytes_be();
                match fixed {
                    None => {
                        zigzag(bytes.len() as i64, out);
                        out.extend_from_slice(&bytes);
                    }
                    Some(size) if bytes.len() <= *size => {
                        let fill = if unscaled.sign() == num_bigint::Sign::Minus {
                            0xff
                        } else {
                            0
                        };
                        out.extend(std::iter::repeat_n(fill, size - bytes.len()));
                        out.extend_from_slice(&bytes);
                    }
                    Some(size) => {
                        return Err(wrong(path, &format!("decimal fitting {size} bytes")));
                    }
                }
            }
            (Node::Decimal { .. }, _) => return Err(wrong(path, "decimal (string)")),
            (Node::Ref(name), _) => return Err(wrong(path, &format!("unresolved type {name}"))),
        }
        Ok(())
    }

    /// The union branch `v` is written as: `null` to the null branch, a
    /// plain value to the one other branch of a nullable union, else a
    /// `{"<branch>": value}` object; with no wrapper, the first branch the
    /// plain value fits.
    fn branch<'v>(
        &self,
        branches: &[(String, usize)],
        plain: bool,
        v: &'v Json,
    ) -> Option<(usize, usize, &'v Json)> {
        let position = |pred: &dyn Fn(&Node) -> bool| {
            branches
                .iter()
                .position(|(_, n)| pred(&self.nodes[*n]))
                .map(|i| (i, branches[i].1, v))
        };
        if v.is_null() {
            return position(&|n| matches!(n, Node::Null));
        }
        if plain {
            return position(&|n| !matches!(n, Node::Null));
        }
        if let Json::Object(m) = v
            && m.len() == 1
        {
            let (key, inner) = m.iter().next().expect("one member");
            if let Some(i) = branches.iter().position(|(name, _)| name == key) {
                return Some((i, branches[i].1, inner));
            }
        }
        branches.iter().enumerate().find_map(|(i, (_, node))| {
            let fits = match (&self.nodes[*node], v) {
                (Node::Boolean, Json::Bool(_)) => true,
                (Node::Int | Node::Long, Json::Number(x)) => x.is_i64(),
                (Node::Float | Node::Double, Json::Number(_)) => true,
                (Node::String | Node::Enum(_), Json::String(_)) => true,
                (Node::Array(_), Json::Array(_)) => true,
                (Node::Record(_) | Node::Map(_), Json::Object(_)) => true,
                _ => false,
            };
            fits.then_some((i, *node, v))
        })
    }
}

/// Builds the node arena; named types are registered by full name so refs
/// (and recursion) resolve.
#[derive(Default)]
struct Compiler {
    nodes: Vec<Node>,
    named: HashMap<String, usize>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, s: &Schema) -> Result<usize, SchemaError> {
        let node = match s {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String | Schema::Uuid => Node::String,
            Schema::Duration => Node::Fixed(12),
            Schema::BigDecimal => {
                return Err(SchemaError(
                    "big-decimal is not supported; use decimal with a precision and scale".into(),
                ));
            }
            Schema::Fixed(f) => {
                let i = self.push(Node::Fixed(f.size));
                self.named.insert(f.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Enum(e) => {
                let i = self.push(Node::Enum(e.symbols.clone()));
                self.named.insert(e.name.fullname(None), i);
                return Ok(i);
            }
            Schema::Decimal(d) => {
                let fixed = match &*d.inner {
                    Schema::Fixed(f) => Some(f.size),
                    _ => None,
                };
                Node::Decimal {
                    scale: d.scale as u32,
                    fixed,
                }
            }
            Schema::Array(a) => {
                let i = self.push(Node::Null);
                let item = self.node(&a.items)?;
                self.nodes[i] = Node::Array(item);
                return Ok(i);
            }
            Schema::Map(m) => {
                let i = self.push(Node::Null);
                let value = self.node(&m.types)?;
                self.nodes[i] = Node::Map(value);
                return Ok(i);
            }
            Schema::Record(r) => {
                // Registered before its fields, which may refer to it.
                let i = self.push(Node::Null);
                self.named.insert(r.name.fullname(None), i);
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    fields.push((f.name.clone(), self.node(&f.schema)?));
                }
                self.nodes[i] = Node::Record(fields);
                return Ok(i);
            }
            Schema::Union(u) => {
                let i = self.push(Node::Null);
                let mut branches = Vec::with_capacity(u.variants().len());
                for b in u.variants() {
                    branches.push((branch_name(b), self.node(b)?));
                }
                let nulls = u
                    .variants()
                    .iter()
                    .filter(|b| matches!(b, Schema::Null))
                    .count();
                let plain = nulls == 1 && branches.len() == 2;
                self.nodes[i] = Node::Union { branches, plain };
                return Ok(i);
            }
            Schema::Ref { name } => Node::Ref(name.fullname(None)),
        };
        Ok(self.push(node))
    }

    /// Points every ref at its named type.
    fn resolve(&mut self) -> Result<(), SchemaError> {
        for i in 0..self.nodes.len() {
            if let Node::Ref(name) = &self.nodes[i] {
                let target = *self
                    .named
                    .get(name)
                    .ok_or_else(|| SchemaError(format!("unknown type {name}")))?;
                // A ref is replaced by a copy of what it names; children are
                // indices, so recursion stays finite.
                self.nodes[i] = self.nodes[target].clone();
            }
        }
        Ok(())
    }
}

/// True when node `x` of `a` and node `y` of `b` write the same bytes for
/// the same JSON (names, types, symbols, sizes, branches); deep recursive
/// types are taken as different.
fn same(a: &Plan, x: usize, b: &Plan, y: usize, depth: usize) -> bool {
    if depth > 16 {
        return false;
    }
    let both = |p: usize, q: usize| same(a, p, b, q, depth + 1);
    match (&a.nodes[x], &b.nodes[y]) {
        (Node::Null, Node::Null)
        | (Node::Boolean, Node::Boolean)
        | (Node::Int, Node::Int)
        | (Node::Long, Node::Long)
        | (Node::Float, Node::Float)
        | (Node::Double, Node::Double)
        | (Node::Bytes, Node::Bytes)
        | (Node::String, Node::String) => true,
        (Node::Fixed(m), Node::Fixed(n)) => m == n,
        (Node::Enum(m), Node::Enum(n)) => m == n,
        (Node::Array(p), Node::Array(q)) | (Node::Map(p), Node::Map(q)) => both(*p, *q),
        (Node::Record(m), Node::Record(n)) => {
            m.len() == n.len()
                && m.iter()
                    .zip(n)
                    .all(|((a1, p), (b1, q))| a1 == b1 && both(*p, *q))
        }
        (
            Node::Union {
                branches: m,
                plain: pm,
            },
            Node::Union {
                branches: n,
                plain: pn,
            },
        ) => {
            pm == pn
                && m.len() == n.len()
                && m.iter()
                    .zip(n)
                    .all(|((a1, p), (b1, q))| a1 == b1 && both(*p, *q))
        }
        (
            Node::Decimal {
                scale: s1,
                fixed: f1,
            },
            Node::Decimal {
                scale: s2,
                fixed: f2,
            },
        ) => s1 == s2 && f1 == f2,
        _ => false,
    }
}

/// The name a union branch is written under in JSON: a named type's full
/// name, else the type's name.
fn branch_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        Schema::Ref { name } => name.fullname(None),
        Schema::Map(_) => "map".into(),
        Schema::Array(_) => "array".into(),
        other => {
            let kind = apache_avro::schema::SchemaKind::from(other);
            match kind {
                apache_avro::schema::SchemaKind::Null => "null".into(),
                apache_avro::schema::SchemaKind::Boolean => "boolean".into(),
                apache_avro::schema::SchemaKind::Int => "int".into(),
                apache_avro::schema::SchemaKind::Long => "long".into(),
                apache_avro::schema::SchemaKind::Float => "float".into(),
                apache_avro::schema::SchemaKind::Double => "double".into(),
                apache_avro::schema::SchemaKind::Bytes => "bytes".into(),
                apache_avro::schema::SchemaKind::String => "string".into(),
                other => format!("{other:?}").to_lowercase(),
            }
        }
    }
}

/// The binary datum being read.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("the datum ends early")?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("{n} bytes claimed, {} left", self.bytes.len() - self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A zigzag varint long.
    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err("varint longer than 64 bits".into());
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// A length: a non-negative long within what is left.
    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("negative length {n}"))
    }

    /// Array and map blocks: counts (negative: followed by a byte size)
    /// until a 0 count; `item` reads each item.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            let count = count.unsigned_abs();
            // Each item takes at least one byte (except nulls, bounded by
            // what is left all the same).
            if count > (self.bytes.len() - self.at) as u64 + 1 && count > 1 << 20 {
                return Err(format!("block of {count} items"));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

/// `fmt::Write` into a byte buffer.
struct Writer<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn zigzag(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// `s` as a JSON string. Most strings need no escape: they are copied
/// between quotes; the others go through `serde_json`.
fn json_string(s: &str, out: &mut Vec<u8>) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        serde_json::to_writer(&mut *out, s).expect("vec write");
        return;
    }
    quoted(s.as_bytes(), out);
}

/// `text` between quotes, as it is.
fn quoted(text: &[u8], out: &mut Vec<u8>) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

/// Whether `b` is printable ASCII without `"` or `\`: valid UTF-8 that is
/// JSON string text as it is. Eight bytes at a time (SWAR), as most
/// strings are.
fn plain(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A high bit where a byte of `x` is zero (exact for the whole word).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        let below_space = v.wrapping_sub(ONES * 0x20) & !v;
        let odd = v
            | below_space
            | zero(v ^ (ONES * u64::from(b'"')))
            | zero(v ^ (ONES * u64::from(b'\\')));
        if odd & HIGH != 0 {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&c| (0x20..0x80).contains(&c) && c != b'"' && c != b'\\')
}

/// A float as JSON: non-finite values as strings. An Avro float is
/// printed by its shortest f32 text (which reads back through f64 to the
/// same f32), a double by its shortest f64 text.
fn float(v: f64, out: &mut Vec<u8>, single: Option<f32>) {
    if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else if let Some(f) = single {
        write!(Writer(out), "{f}").expect("vec write");
    } else {
        serde_json::to_writer(&mut *out, &v).expect("vec write");
    }
}

fn number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(x) => x.as_f64(),
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn latin1(bytes: &[u8], out: &mut Vec<u8>) {
    let s: String = bytes.iter().map(|b| char::from(*b)).collect();
    json_string(&s, out);
}

fn from_latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// `unscaled / 10^scale` as exact decimal text.
fn decimal_text(unscaled: &num_bigint::BigInt, scale: u32, out: &mut Vec<u8>) {
    let digits = unscaled.magnitude().to_string();
    if unscaled.sign() == num_bigint::Sign::Minus {
        out.push(b'-');
    }
    let scale = scale as usize;
    if scale == 0 {
        out.extend_from_slice(digits.as_bytes());
        return;
    }
    let padded = if digits.len() <= scale {
        format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - scale);
    out.extend_from_slice(int.as_bytes());
    out.push(b'.');
    out.extend_from_slice(frac.as_bytes());
}

/// The unscaled integer of decimal text with at most `scale` fraction
/// digits.
fn decimal_unscaled(s: &str, scale: u32) -> Option<num_bigint::BigInt> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > scale as usize
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}{}", "0".repeat(scale as usize - frac.len()));
    let magnitude: num_bigint::BigUint = digits.parse().ok()?;
    let sign = if negative {
        num_bigint::Sign::Minus
    } else {
        num_bigint::Sign::Plus
    };
    Some(num_bigint::BigInt::from_biguint(sign, magnitude))
}

/// What kind of JSON value `v` is, for errors.
fn kind(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(_) => "a boolean".into(),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.len() <= 40 => format!("string \"{s}\""),
        Json::String(_) => "a string".into(),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

/// The fast encoder: a serde seed that writes the Avro of schema node
/// `node` while `serde_json` parses. It fails (and [`Plan::encode_json`]
/// falls back to the value path) on anything but the plain cases.
struct Seed<'p, 'o> {
    plan: &'p Plan,
    node: usize,
    out: &'o mut Vec<u8>,
}

/// Members out of schema order: their bytes, and where each field's are.
type Waiting = (Vec<u8>, Vec<Option<(usize, usize)>>);

/// The fast path's error: only says "take the slow path".
fn slow<E: serde::de::Error>() -> E {
    E::custom("slow path")
}

impl Seed<'_, '_> {
    /// The node a non-null value is written as: a nullable union's other
    /// branch (its index written first); `None` for other unions.
    fn target(&mut self) -> Option<usize> {
        match &self.plan.nodes[self.node] {
            Node::Union {
                branches,
                plain: true,
            } => {
                let (i, (_, n)) = branches
                    .iter()
                    .enumerate()
                    .find(|(_, (_, n))| !matches!(self.plan.nodes[*n], Node::Null))?;
                zigzag(i as i64, self.out);
                Some(*n)
            }
            Node::Union { .. } => None,
            _ => Some(self.node),
        }
    }

    fn int<E: serde::de::Error>(mut self, v: i128) -> Result<(), E> {
        let node = self.target().ok_or_else(slow)?;
        match &self.plan.nodes[node] {
            Node::Int => zigzag(i64::from(i32::try_from(v).map_err(|_| slow())?), self.out),
            Node::Long => zigzag(i64::try_from(v).map_err(|_| slow())?, self.out),
            Node::Float => self.out.extend_from_slice(&(v as f64 as f32).to_le_bytes()),
            Node::Double => self.out.extend_from_slice(&(v as f64).to_le_bytes()),
            _ => return Err(slow()),
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value of the schema")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        match &self.plan.nodes[self.node] {
            Node::Null => Ok(()),
            Node::Union { branches, .. } => {
                let i = branches
                    .iter()
                    .position(|(_, n)| matches!(self.plan.nodes[*n], Node::Null))
                    .ok_or_else(slow)?;
                zigzag(i as i64, self.out);
                Ok(())
            }
            _ => Err(slow()),
        }
    }

    fn visit_bool<E: serde::de::Error>(mut self, v: bool) -> Result<(), E> {
        let node = self.target().ok_or_else(slow)?;
        match self.plan.nodes[node] {
            Node::Boolean => {
                self.out.push(u8::from(v));
                Ok(())
            }
            _ => Err(slow()),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.int(i128::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.int(i128::from(v))
    }

    fn visit_f64<E: serde::de::Error>(mut self, v: f64) -> Result<(), E> {
        let node = self.target().ok_or_else(slow)?;
        match self.plan.nodes[node] {
            Node::Float => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            Node::Double => self.out.extend_from_slice(&v.to_le_bytes()),
            _ => return Err(slow()),
        }
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        let node = self.target().ok_or_else(slow)?;
        match &self.plan.nodes[node] {
            Node::String => {
                zigzag(v.len() as i64, self.out);
                self.out.extend_from_slice(v.as_bytes());
                Ok(())
            }
            Node::Enum(symbols) => {
                let i = symbols.iter().position(|s| s == v).ok_or_else(slow)?;
                zigzag(i as i64, self.out);
                Ok(())
            }
            // Bytes, fixed, decimals and non-finite floats: rare; the value
            // path writes them.
            _ => Err(slow()),
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let node = self.target().ok_or_else(slow)?;
        let Node::Array(item) = self.plan.nodes[node] else {
            return Err(slow());
        };
        let mut items = Vec::new();
        let mut count = 0i64;
        while seq
            .next_element_seed(Seed {
                plan: self.plan,
                node: item,
                out: &mut items,
            })?
            .is_some()
        {
            count += 1;
        }
        if count > 0 {
            zigzag(count, self.out);
            self.out.extend_from_slice(&items);
        }
        self.out.push(0);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let node = self.target().ok_or_else(slow)?;
        match &self.plan.nodes[node] {
            Node::Record(fields) => record_members(self.plan, fields, &mut map, self.out),
            Node::Map(value) => {
                let mut entries = Vec::new();
                let mut count = 0i64;
                while map.next_key_seed(KeyInto(&mut entries))?.is_some() {
                    map.next_value_seed(Seed {
                        plan: self.plan,
                        node: *value,
                        out: &mut entries,
                    })?;
                    count += 1;
                }
                if count > 0 {
                    zigzag(count, self.out);
                    self.out.extend_from_slice(&entries);
                }
                self.out.push(0);
                Ok(())
            }
            _ => Err(slow()),
        }
    }
}

/// Writes a record's `fields` from the members of `map`, in schema order.
/// Members that arrive in it (the usual case: stages append fields in the
/// order the output schema lists them) are written at once; from the first
/// one out of order on, members wait in a scratch buffer. Members not in
/// `fields` are not written (projection); fields without a member are
/// written as null where the schema allows it.
fn record_members<'de, A: serde::de::MapAccess<'de>>(
    plan: &Plan,
    fields: &[(String, usize)],
    map: &mut A,
    out: &mut Vec<u8>,
) -> Result<(), A::Error> {
    let mut next = 0;
    let mut waiting: Option<Waiting> = None;
    while let Some(field) = map.next_key_seed(FieldOf(fields, next))? {
        match field {
            Some(i) if waiting.is_none() && i == next => {
                map.next_value_seed(Seed {
                    plan,
                    node: fields[i].1,
                    out: &mut *out,
                })?;
                next += 1;
            }
            // A member written already, again: the value path keeps the
            // last one.
            Some(i) if i < next => return Err(slow()),
            Some(i) => {
                let (scratch, at) =
                    waiting.get_or_insert_with(|| (Vec::new(), vec![None; fields.len()]));
                let a = scratch.len();
                map.next_value_seed(Seed {
                    plan,
                    node: fields[i].1,
                    out: scratch,
                })?;
                at[i] = Some((a, scratch.len()));
            }
            None => {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
    }
    for (i, (_, n)) in fields.iter().enumerate().skip(next) {
        match waiting
            .as_ref()
            .and_then(|(s, at)| at[i].map(|(a, b)| &s[a..b]))
        {
            Some(bytes) => out.extend_from_slice(bytes),
            None => {
                let mut path = String::new();
                plan.write(*n, &Json::Null, &mut path, out)
                    .map_err(|_| slow())?;
            }
        }
    }
    Ok(())
}

/// The members of a JSON object as the fields from `from` on of a record
/// (the members an output appended to its input).
struct Tail<'p, 'o> {
    plan: &'p Plan,
    fields: &'p [(String, usize)],
    out: &'o mut Vec<u8>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Tail<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Tail<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the appended members")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        record_members(self.plan, self.fields, &mut map, self.out)
    }
}

/// A record member's name read as the index of its field (`None`: not in
/// the schema), without allocating the name; the field at the second
/// index (the next in schema order) is tried first.
struct FieldOf<'a>(&'a [(String, usize)], usize);

impl<'de> serde::de::DeserializeSeed<'de> for FieldOf<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldOf<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.0.get(self.1).is_some_and(|(name, _)| name == v) {
            return Ok(Some(self.1));
        }
        Ok(self.0.iter().position(|(name, _)| name == v))
    }
}

/// A map key written as an Avro string into the buffer.
struct KeyInto<'o>(&'o mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for KeyInto<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        zigzag(v.len() as i64, self.0);
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_finds_every_byte_that_needs_care() {
        let reference = |b: &[u8]| {
            b.iter()
                .all(|&c| (0x20..0x80).contains(&c) && c != b'"' && c != b'\\')
        };
        for len in [0, 1, 7, 8, 9, 16, 23] {
            let base = vec![b'a'; len];
            assert!(plain(&base));
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut b = base.clone();
                    b[at] = c;
                    assert_eq!(plain(&b), reference(&b), "byte {c:#x} at {at} of {len}");
                }
            }
        }
    }

    pub(super) const SCHEMA: &str = r#"{
        "type": "record", "name": "Login", "namespace": "acme",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "n", "type": "int"},
            {"name": "big", "type": "long"},
            {"name": "ratio", "type": "float"},
            {"name": "score", "type": "double"},
            {"name": "ok", "type": "boolean"},
            {"name": "raw", "type": "bytes"},
            {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 2}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "attrs", "type": {"type": "map", "values": "long"}},
            {"name": "maybe", "type": ["null", "string"], "default": null},
            {"name": "either", "type": ["null", "long", "string"]},
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "next", "type": ["null", "Login"], "default": null}
        ]
    }"#;

    pub(super) const JSON: &str = r#"{"id":"u1","n":-3,"big":9007199254740993,"ratio":1.5,"score":-0.25,"ok":true,"raw":"\u0000ÿa","hash":"ab","kind":"B","tags":["x","y"],"attrs":{"z":1,"a":2},"maybe":null,"either":{"string":"s"},"price":"-12.30","next":{"id":"u2","n":0,"big":0,"ratio":0.0,"score":"NaN","ok":false,"raw":"","hash":"cd","kind":"A","tags":[],"attrs":{},"maybe":"m","either":{"long":5},"price":"0.05","next":null}}"#;

    #[test]
    fn json_round_trips_through_avro_byte_for_byte() {
        let plan = Plan::parse(SCHEMA, &[]).unwrap();
        let value: Json = serde_json::from_str(JSON).unwrap();
        let mut bin = Vec::new();
        plan.encode(&value, &mut bin).unwrap();
        // apache-avro reads what this module wrote.
        let read = apache_avro::from_avro_datum(plan.schema(), &mut &bin[..], None).unwrap();
        assert!(matches!(read, apache_avro::types::Value::Record(_)));
        let mut json = Vec::new();
        plan.decode(&bin, &mut json).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        // The map keeps its order; floats and decimals keep their text.
        assert!(text.contains(r#""attrs":{"z":1,"a":2}"#), "{text}");
        assert!(text.contains(r#""price":"-12.30""#), "{text}");
        let again: Json = serde_json::from_slice(&json).unwrap();
        let mut bin2 = Vec::new();
        plan.encode(&again, &mut bin2).unwrap();
        assert_eq!(bin, bin2, "decode then encode gives the same bytes");
    }

    #[test]
    fn a_misfit_names_the_field_and_the_type() {
        let plan = Plan::parse(SCHEMA, &[]).unwrap();
        let mut value: Json = serde_json::from_str(JSON).unwrap();
        value["next"]["next"] = serde_json::json!({"id": 7});
        let e = plan.encode(&value, &mut Vec::new()).unwrap_err();
        assert_eq!(e.path, "$.next.next.id");
        value["next"]["next"] = Json::Null;
        value["tags"][1] = Json::from(7);
        let e = plan.encode(&value, &mut Vec::new()).unwrap_err();
        assert_eq!(e.path, "$.tags[1]");
        assert_eq!(e.expected, "string");
        value["tags"][1] = Json::from("y");
        value["kind"] = Json::from("C");
        let e = plan.encode(&value, &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"field $.kind: expected one of A, B, found "C""#
        );
        value["kind"] = Json::from("A");
        value["n"] = Json::from(1u64 << 40);
        assert!(
            plan.encode(&value, &mut Vec::new())
                .unwrap_err()
                .expected
                .starts_with("int")
        );
    }

    #[test]
    fn truncated_or_trailing_bytes_do_not_decode() {
        let plan = Plan::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"}]}"#,
            &[],
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(plan.decode(&[10, b'a'], &mut out).is_err());
        assert!(out.is_empty(), "nothing is left of a failed decode");
        assert!(
            plan.decode(&[2, b'a', 0], &mut out)
                .unwrap_err()
                .why
                .contains("left")
        );
        plan.decode(&[2, b'a'], &mut out).unwrap();
        assert_eq!(out, br#"{"s":"a"}"#);
    }
}

#[cfg(test)]
mod fast {
    use super::*;

    /// The fast path writes exactly what the value path writes, whatever
    /// order the members come in, and falls back where it must.
    #[test]
    fn the_fast_path_writes_what_the_value_path_writes() {
        let plan = Plan::parse(tests::SCHEMA, &[]).unwrap();
        let value: Json = serde_json::from_str(tests::JSON).unwrap();
        let mut slow = Vec::new();
        plan.encode(&value, &mut slow).unwrap();
        let mut fast = Vec::new();
        plan.encode_json(tests::JSON.as_bytes(), &mut fast).unwrap();
        assert_eq!(fast, slow);
        // Members out of order, an unknown one, a missing nullable one.
        let processed =
            Plan::parse(include_str!("../../schemas/processed-login.avsc"), &[]).unwrap();
        let json = br#"{"anomaly":false,"user_id":"u","app_version":"2","device_type":"android","ip":"1","locale":"DE","device_id":"d","timestamp":"1","extra":{"a":[1,2]},"processed_timestamp":5,"device_category":"Mobile"}"#;
        let mut fast = Vec::new();
        processed.encode_json(json, &mut fast).unwrap();
        let mut slow = Vec::new();
        processed
            .encode(&serde_json::from_slice(json).unwrap(), &mut slow)
            .unwrap();
        assert_eq!(fast, slow);
        // An output that appends members to its Avro input: the input's
        // bytes, then the appended fields, are the whole encoding.
        let login = Plan::parse(include_str!("../../schemas/user-login.avsc"), &[]).unwrap();
        assert_eq!(processed.prefix_of(&login), Some(7));
        assert_eq!(login.prefix_of(&processed), None);
        let input = br#"{"user_id":"u","app_version":"2","device_type":"android","ip":"1","locale":"DE","device_id":"d","timestamp":"1"}"#;
        let mut payload = Vec::new();
        login.encode_json(input, &mut payload).unwrap();
        let tail = br#"{"processed_timestamp":5,"device_category":"Mobile","anomaly":true,"anomaly_reasons":["x"]}"#;
        let mut reused = Vec::new();
        processed
            .encode_appended(&payload, 7, tail, &mut reused)
            .unwrap();
        let whole = [&input[..input.len() - 1], b",", &tail[1..]].concat();
        let mut full = Vec::new();
        processed.encode_json(&whole, &mut full).unwrap();
        assert_eq!(reused, full);
        let e = processed
            .encode_json(br#"{"anomaly":1}"#, &mut Vec::new())
            .unwrap_err();
        assert_eq!(e.path, "$.user_id", "the value path names the first misfit");
    }
}
