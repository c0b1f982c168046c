//! The Confluent wire framing of a schema-registry value: magic byte 0,
//! the schema id as a big-endian 32-bit integer, then the payload (for
//! Protobuf, message indexes come before the payload).

/// Bytes before the payload.
pub const HEADER: usize = 5;

/// Why bytes are not a framed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Fewer than the 5 header bytes.
    #[error(
        "{0} bytes, too short for the schema-registry framing (magic byte 0 and a 4-byte schema id)"
    )]
    Short(usize),
    /// The first byte is not the magic 0.
    #[error("not framed for a schema registry: first byte 0x{0:02x}, expected the magic byte 0x00")]
    Magic(u8),
}

/// The schema id and the payload of a framed value.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), FramingError> {
    if bytes.len() < HEADER {
        return match bytes.first() {
            Some(b) if *b != 0 => Err(FramingError::Magic(*b)),
            _ => Err(FramingError::Short(bytes.len())),
        };
    }
    if bytes[0] != 0 {
        return Err(FramingError::Magic(bytes[0]));
    }
    let id = u32::from_be_bytes(bytes[1..HEADER].try_into().expect("4 bytes"));
    Ok((id, &bytes[HEADER..]))
}

/// Appends the header of schema `id` to `out`.
pub fn frame(id: u32, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_unframes() {
        let mut out = Vec::new();
        frame(258, &mut out);
        out.extend_from_slice(b"payload");
        assert_eq!(&out[..5], &[0, 0, 0, 1, 2]);
        assert_eq!(unframe(&out), Ok((258, &b"payload"[..])));
        assert_eq!(unframe(b"{\"a\":1}"), Err(FramingError::Magic(b'{')));
        assert_eq!(unframe(&[0, 0]), Err(FramingError::Short(2)));
        assert_eq!(unframe(b"{}"), Err(FramingError::Magic(b'{')));
    }
}
