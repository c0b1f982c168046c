//! The transport to a broker, configured once for every connection the host
//! makes: rskafka's data connections (through [`Transport::configure`]) and
//! the connections the host opens itself, like the group coordinator's
//! (through [`Transport::connect`]). Both read the same settings, so adding
//! TLS (rustls) and SASL here covers both, without another rewrite.
//! Today the transport is plain TCP.

use std::fmt::Debug;

use rskafka::client::ClientBuilder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream to a broker.
pub trait BrokerStream: AsyncRead + AsyncWrite + Unpin + Send + Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> BrokerStream for T {}

/// How to reach brokers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    /// Disable Nagle's algorithm on every connection.
    pub nodelay: bool,
}

impl Transport {
    /// Plain TCP with `TCP_NODELAY` (Kafka requests are small and
    /// latency-bound).
    pub fn plain() -> Self {
        Self { nodelay: true }
    }

    /// Applies these settings to an rskafka client builder.
    pub fn configure(&self, builder: ClientBuilder) -> ClientBuilder {
        builder
    }

    /// Opens a connection to `addr` (`host:port`).
    pub async fn connect(&self, addr: &str) -> std::io::Result<Box<dyn BrokerStream>> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(self.nodelay)?;
        Ok(Box::new(stream))
    }
}
