//! The transport to a broker, configured once for every connection the host
//! makes: rskafka's data connections (through [`Transport::configure`]) and
//! the connections the host opens itself, like the group coordinator's
//! (through [`Transport::connect`]). Both get the same TLS (rustls) and
//! SASL settings, built by [`super::security`].
//!
//! [`Transport::connect`] runs the whole opening: TCP, the TLS handshake,
//! then SASL (SaslHandshake v1, SaslAuthenticate v1 steps driven by rsasl,
//! the library rskafka uses for its own connections).

use std::fmt::Debug;
use std::sync::Arc;

use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
use rskafka::client::{ClientBuilder, Credentials, SaslConfig};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::security::{SaslCredentials, SaslMechanism};
use super::wire::{WireError, roundtrip};

/// A byte stream to a broker.
pub trait BrokerStream: AsyncRead + AsyncWrite + Unpin + Send + Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> BrokerStream for T {}

/// How to reach brokers.
#[derive(Clone, Default)]
pub struct Transport {
    /// Disable Nagle's algorithm on every connection.
    pub nodelay: bool,
    /// TLS client configuration, when TLS is on.
    pub tls: Option<Arc<ClientConfig>>,
    /// SASL credentials, when SASL is on.
    pub sasl: Option<SaslCredentials>,
}

impl Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("nodelay", &self.nodelay)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP (or the stream under TLS) failed: the broker may come back.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed on the certificate or protocol: retrying
    /// will not help.
    #[error(
        "TLS handshake with {broker} failed: {reason}; check --tls-ca-file and that the broker certificate names the host in {broker}"
    )]
    Tls {
        /// The broker.
        broker: String,
        /// rustls's reason.
        reason: String,
    },
    /// The broker refused the credentials or the mechanism.
    #[error(
        "SASL {mechanism} authentication as {user} at {broker} failed: {reason}; check the user name and password (PIPELINE_SASL_PASSWORD or --sasl-password-file)"
    )]
    Auth {
        /// The broker.
        broker: String,
        /// The mechanism.
        mechanism: &'static str,
        /// The user name.
        user: String,
        /// What the broker (or the SASL exchange) said.
        reason: String,
    },
}

impl ConnectError {
    /// True when retrying the same settings cannot succeed.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ConnectError::Io(_))
    }
}

impl Transport {
    /// Plain TCP with `TCP_NODELAY` (Kafka requests are small and
    /// latency-bound).
    pub fn plain() -> Self {
        Self {
            nodelay: true,
            ..Self::default()
        }
    }

    /// Applies these settings to an rskafka client builder.
    pub fn configure(&self, mut builder: ClientBuilder) -> ClientBuilder {
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.clone());
        }
        if let Some(s) = &self.sasl {
            let c = Credentials::new(s.username.clone(), s.password.expose().to_owned());
            builder = builder.sasl_config(match s.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(c),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
            });
        }
        builder
    }

    /// Opens a connection to `addr` (`host:port`): TCP, then TLS and SASL
    /// when configured. `client_id` names us in the SASL requests.
    pub async fn connect(
        &self,
        addr: &str,
        client_id: &str,
    ) -> Result<Box<dyn BrokerStream>, ConnectError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(self.nodelay)?;
        let mut stream: Box<dyn BrokerStream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let tls_error = |reason: String| ConnectError::Tls {
                    broker: addr.to_owned(),
                    reason,
                };
                let name = ServerName::try_from(host_of(addr).to_owned()).map_err(|e| {
                    tls_error(format!("{addr} is not a valid TLS server name: {e}"))
                })?;
                let tls = TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        // rustls wraps its own errors (certificate, protocol)
                        // in the io::Error; anything else is the network.
                        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                            Some(r) => tls_error(r.to_string()),
                            None => ConnectError::Io(e),
                        }
                    })?;
                Box::new(tls)
            }
        };
        if let Some(sasl) = &self.sasl {
            authenticate(&mut stream, sasl, addr, client_id).await?;
        }
        Ok(stream)
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Kafka's SASL exchange on a fresh connection: SaslHandshake names the
/// mechanism, then SaslAuthenticate carries each message rsasl produces
/// until it reports the exchange finished (for SCRAM, after it has checked
/// the server's signature).
async fn authenticate(
    stream: &mut Box<dyn BrokerStream>,
    sasl: &SaslCredentials,
    broker: &str,
    client_id: &str,
) -> Result<(), ConnectError> {
    let mechanism = sasl.mechanism.name();
    let auth = |reason: String| ConnectError::Auth {
        broker: broker.to_owned(),
        mechanism,
        user: sasl.username.clone(),
        reason,
    };
    let wire = |e: WireError| match e {
        WireError::Io(e) => ConnectError::Io(e),
        WireError::Codec(c) => auth(c),
    };
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    let resp = roundtrip(stream, 1, client_id, handshake, 1)
        .await
        .map_err(wire)?;
    if resp.error_code != 0 {
        let offered: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(auth(format!(
            "the broker does not offer {mechanism} (error code {}); it offers [{}]",
            resp.error_code,
            offered.join(", ")
        )));
    }
    let config = SASLConfig::with_credentials(
        None,
        sasl.username.clone(),
        sasl.password.expose().to_owned(),
    )
    .map_err(|e| auth(e.to_string()))?;
    let name = Mechname::parse(mechanism.as_bytes()).map_err(|e| auth(e.to_string()))?;
    let mut session = SASLClient::new(config)
        .start_suggested(&[name])
        .map_err(|e| auth(e.to_string()))?;
    let mut received: Option<bytes::Bytes> = None;
    let mut correlation = 1;
    loop {
        let mut out = Vec::new();
        let state = session
            .step(received.as_deref(), &mut out)
            .map_err(|e| auth(e.to_string()))?;
        if state.has_sent_message() {
            correlation += 1;
            let req = SaslAuthenticateRequest::default().with_auth_bytes(out.into());
            let resp = roundtrip(stream, correlation, client_id, req, 1)
                .await
                .map_err(wire)?;
            if resp.error_code != 0 {
                let message = resp.error_message.as_ref().map_or("", |m| m.as_str());
                return Err(auth(format!("error code {}: {message}", resp.error_code)));
            }
            received = Some(resp.auth_bytes);
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:9092"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9092"), "::1");
        assert_eq!(host_of("kafka-0.kafka:9093"), "kafka-0.kafka");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let t = Transport {
            sasl: Some(SaslCredentials {
                mechanism: SaslMechanism::ScramSha256,
                username: "alice".into(),
                password: crate::secret::Secret::new("hunter2"),
            }),
            ..Transport::plain()
        };
        let shown = format!("{t:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
