//! Protobuf <-> the JSON objects stages see, by the canonical proto3 JSON
//! mapping (64-bit integers as strings, enums by name, bytes in base64,
//! well-known types as their JSON forms) with two of its printer options:
//! fields keep their `.proto` names (`user_id`, not `userId`), so stages
//! written for JSON events read Protobuf ones unchanged, and fields at
//! their default are printed, so every record has the same members. Both
//! spellings are accepted on the way out, and members the message does not
//! have are not written (as with Avro):
//! `prost-reflect`'s dynamic messages, from descriptors `protox` compiles
//! out of the registry's `.proto` text in pure Rust (no `protoc` at run
//! time).
//!
//! A framed Protobuf value carries, between the schema id and the payload,
//! the message indexes: the path of the message type in its file (a
//! zigzag varint count, then that many zigzag varints; the single byte 0
//! for the first message). A decoder that starts at byte 5 reads the
//! wrong message.

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};

/// The name the registry's schema text is compiled under.
const MAIN: &str = "schema.proto";

/// A compiled Protobuf schema: its file's messages.
#[derive(Debug, Clone)]
pub struct Proto {
    pool: DescriptorPool,
    file: String,
}

impl Proto {
    /// Compiles `text` (`.proto` source, or a base64 `FileDescriptorProto`
    /// as Confluent's serializers register it), with `references` (import
    /// name, text) available to its imports.
    pub fn parse(text: &str, references: &[(String, String)]) -> Result<Self, String> {
        let resolver = Sources {
            files: std::iter::once((MAIN.to_owned(), text.to_owned()))
                .chain(references.iter().cloned())
                .collect(),
        };
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler
            .open_file(MAIN)
            .map_err(|e| format!("cannot compile the Protobuf schema: {e}"))?;
        Ok(Self {
            pool: compiler.descriptor_pool(),
            file: MAIN.to_owned(),
        })
    }

    /// The message at `indexes` (top-level index, then nested indexes;
    /// empty: the first message).
    pub fn message(&self, indexes: &[i64]) -> Result<MessageDescriptor, String> {
        let file = self
            .pool
            .get_file_by_name(&self.file)
            .ok_or("the schema has no file")?;
        let first = indexes.first().copied().unwrap_or(0);
        let mut m = usize::try_from(first)
            .ok()
            .and_then(|i| file.messages().nth(i))
            .ok_or_else(|| format!("no message {first} in the schema's file"))?;
        for i in indexes.iter().skip(1) {
            m = usize::try_from(*i)
                .ok()
                .and_then(|i| m.child_messages().nth(i))
                .ok_or_else(|| format!("no nested message {i} in {}", m.full_name()))?;
        }
        Ok(m)
    }

    /// The message named `name` (full name), and its indexes.
    pub fn named(&self, name: &str) -> Result<(MessageDescriptor, Vec<i64>), String> {
        let file = self
            .pool
            .get_file_by_name(&self.file)
            .ok_or("the schema has no file")?;
        fn find(
            m: MessageDescriptor,
            name: &str,
            path: &mut Vec<i64>,
        ) -> Option<MessageDescriptor> {
            if m.full_name() == name {
                return Some(m);
            }
            for (i, child) in m.child_messages().enumerate() {
                path.push(i as i64);
                if let Some(found) = find(child, name, path) {
                    return Some(found);
                }
                path.pop();
            }
            None
        }
        for (i, m) in file.messages().enumerate() {
            let mut path = vec![i as i64];
            if let Some(found) = find(m, name, &mut path) {
                return Ok((found, path));
            }
        }
        Err(format!("the schema has no message {name}"))
    }

    /// The first message's full name.
    pub fn first_name(&self) -> String {
        self.message(&[])
            .map(|m| m.full_name().to_owned())
            .unwrap_or_default()
    }
}

/// Reads the message indexes at the start of a framed Protobuf payload:
/// (indexes, the rest).
pub fn read_indexes(bytes: &[u8]) -> Result<(Vec<i64>, &[u8]), String> {
    let mut at = 0;
    let mut next = || -> Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(at).ok_or("the message indexes end early")?;
            at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err("a message index longer than 64 bits".into())
    };
    let count = next()?;
    if !(0..=64).contains(&count) {
        return Err(format!("{count} message indexes"));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        indexes.push(next()?);
    }
    Ok((indexes, &bytes[at..]))
}

/// Appends message indexes `indexes` (the single 0 for the first message).
pub fn write_indexes(indexes: &[i64], out: &mut Vec<u8>) {
    let zigzag = |v: i64, out: &mut Vec<u8>| {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    };
    if indexes == [0] || indexes.is_empty() {
        out.push(0);
        return;
    }
    zigzag(indexes.len() as i64, out);
    for i in indexes {
        zigzag(*i, out);
    }
}

/// Appends the canonical JSON of the `message` payload.
pub fn decode(
    message: &MessageDescriptor,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let m = DynamicMessage::decode(message.clone(), payload)
        .map_err(|e| format!("not a {} message: {e}", message.full_name()))?;
    let mut s = serde_json::Serializer::new(&mut *out);
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    m.serialize_with_options(&mut s, &options)
        .map_err(|e| format!("{}: {e}", message.full_name()))
}

/// Appends the Protobuf binary of JSON `json` as `message`; the reason,
/// with the field path, when it does not fit.
pub fn encode(message: &MessageDescriptor, json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    let m = DescriptorSeed(message.clone())
        .deserialize(tracked)
        .map_err(|e| format!("field $.{}: {e}", track.path()))?;
    m.encode(out)
        .map_err(|e| format!("{}: {e}", message.full_name()))
}

/// Deserializes a dynamic message of a descriptor (serde's seed).
struct DescriptorSeed(MessageDescriptor);

impl<'de> serde::de::DeserializeSeed<'de> for DescriptorSeed {
    type Value = DynamicMessage;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        DynamicMessage::deserialize_with_options(self.0, d, &options)
    }
}

/// The schema and its references, by file name, for `protox`.
struct Sources {
    files: std::collections::HashMap<String, String>,
}

impl protox::file::FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        let Some(text) = self.files.get(name) else {
            // Google's well-known types come with protox.
            return protox::file::GoogleFileResolver::new().open_file(name);
        };
        match descriptor_from_base64(text) {
            Some(mut proto) => {
                proto.name = Some(name.to_owned());
                Ok(protox::file::File::from_file_descriptor_proto(proto))
            }
            None => protox::file::File::from_source(name, text),
        }
    }
}

/// A `FileDescriptorProto` in base64 (how Confluent's serializers register
/// a schema); `None` for `.proto` source.
fn descriptor_from_base64(text: &str) -> Option<prost_types::FileDescriptorProto> {
    use base64::Engine as _;
    let t = text.trim();
    if t.contains(char::is_whitespace) || t.contains(';') {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(t).ok()?;
    prost_types::FileDescriptorProto::decode(&bytes[..]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
        syntax = "proto3";
        package acme;
        message Other { string x = 1; }
        message Login {
            string user_id = 1;
            int64 seen = 2;
            message Device { string kind = 1; }
            Device device = 3;
        }
    "#;

    #[test]
    fn indexes_pick_the_message_and_json_round_trips() {
        let p = Proto::parse(SCHEMA, &[]).unwrap();
        let (login, path) = p.named("acme.Login").unwrap();
        assert_eq!(path, [1]);
        assert_eq!(p.message(&[1]).unwrap().full_name(), "acme.Login");
        assert_eq!(p.message(&[1, 0]).unwrap().full_name(), "acme.Login.Device");
        let mut framed = Vec::new();
        write_indexes(&path, &mut framed);
        assert_eq!(framed, [2, 2]);
        let mut bin = Vec::new();
        encode(
            &login,
            br#"{"userId":"u1","seen":"42","device":{"kind":"android"}}"#,
            &mut bin,
        )
        .unwrap();
        framed.extend_from_slice(&bin);
        let (indexes, payload) = read_indexes(&framed).unwrap();
        assert_eq!(indexes, [1]);
        let mut json = Vec::new();
        decode(&p.message(&indexes).unwrap(), payload, &mut json).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"user_id":"u1","seen":"42","device":{"kind":"android"}}"#
        );
        let err = encode(
            &login,
            br#"{"userId":"u1","device":{"kind":7}}"#,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.contains("device.kind"), "{err}");
        assert_eq!(read_indexes(&[0, 9]).unwrap(), (vec![], &[9u8][..]));
    }
}
