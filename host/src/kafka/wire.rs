//! Kafka's request framing over a byte stream, for the connections the host
//! opens itself (the group coordinator's, and the SASL exchange on every
//! such connection): a 4-byte big-endian length, the request header, the
//! body, then one response read back and matched by correlation id.
//! Messages are the `kafka-protocol` crate's.

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{
    Decodable, HeaderVersion, Request, StrBytes, encode_request_header_into_buffer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response accepted (a sanity bound against a garbled length).
const MAX_RESPONSE: usize = 64 << 20;

/// Why one request/response exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A request could not be encoded or a response decoded.
    #[error("protocol error: {0}")]
    Codec(String),
}

/// Sends `req` at `version` with `correlation` and reads its response.
pub async fn roundtrip<R, S>(
    stream: &mut S,
    correlation: i32,
    client_id: &str,
    req: R,
    version: i16,
) -> Result<R::Response, WireError>
where
    R: Request,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let codec = |e: anyhow::Error| WireError::Codec(e.to_string());
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    encode_request_header_into_buffer(&mut buf, &header).map_err(codec)?;
    req.encode(&mut buf, version).map_err(codec)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).await?;
    let len = stream.read_i32().await?;
    if len < 0 || len as usize > MAX_RESPONSE {
        return Err(WireError::Codec(format!("response length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await?;
    let mut body = bytes::Bytes::from(body);
    let header =
        ResponseHeader::decode(&mut body, R::Response::header_version(version)).map_err(codec)?;
    if header.correlation_id != correlation {
        return Err(WireError::Codec(format!(
            "correlation id {} for request {correlation}",
            header.correlation_id
        )));
    }
    let resp = R::Response::decode(&mut body, version).map_err(codec)?;
    if body.has_remaining() {
        tracing::trace!(
            api_key = R::KEY,
            left = body.remaining(),
            "response had trailing bytes"
        );
    }
    Ok(resp)
}

/// A Kafka error as Kafka's own tools print it: `REBALANCE_IN_PROGRESS (27)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorName(pub kafka_protocol::ResponseError);

impl std::fmt::Display for ErrorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use kafka_protocol::ResponseError;
        let code = self.0.code();
        if let ResponseError::Unknown(_) = self.0 {
            return write!(f, "unknown error code {code}");
        }
        // kafka-protocol names the variants after Kafka's Errors.java in
        // CamelCase; Kafka prints them in SCREAMING_SNAKE_CASE.
        let camel = format!("{:?}", self.0);
        let mut name = String::with_capacity(camel.len() + 8);
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
        write!(f, "{name} ({code})")
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorName;
    use kafka_protocol::ResponseError;

    #[test]
    fn errors_print_as_kafka_names_them() {
        assert_eq!(
            ErrorName(ResponseError::RebalanceInProgress).to_string(),
            "REBALANCE_IN_PROGRESS (27)"
        );
        assert_eq!(
            ErrorName(ResponseError::try_from_code(82).unwrap()).to_string(),
            "FENCED_INSTANCE_ID (82)"
        );
        assert_eq!(
            ErrorName(ResponseError::Unknown(999)).to_string(),
            "unknown error code 999"
        );
    }
}
