//! TLS and SASL settings: what the user writes (`[kafka.tls]`,
//! `[kafka.sasl]`, `--tls*` and `--sasl*` flags), checked once and turned
//! into the [`Transport`] every connection uses.
//!
//! - TLS is rustls with the ring provider. The brokers' certificates are
//!   checked against `ca_file` when given, else against the Mozilla root set
//!   compiled into the binary (a `FROM scratch` image has no system store).
//!   `cert_file` + `key_file` add a client certificate (mutual TLS).
//! - SASL is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512. The password comes from
//!   `PIPELINE_SASL_PASSWORD` or `password_file`, never from a flag or the
//!   config file itself, and is held as a [`Secret`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::transport::Transport;
use crate::secret::{self, Secret, SecretError};

/// Environment variable with the SASL password (wins over the file).
pub const PASSWORD_ENV: &str = "PIPELINE_SASL_PASSWORD";

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum SaslMechanism {
    /// RFC 4616: user and password in the clear (use it over TLS only).
    #[serde(rename = "PLAIN")]
    #[value(name = "PLAIN")]
    Plain,
    /// RFC 7677 with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name Kafka uses in SaslHandshake.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    /// Mechanism.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (its `Debug` hides it).
    pub password: Secret,
}

/// `[kafka.tls]` and the `--tls*` flags: the table, `--tls` or any other
/// `--tls-*` flag turns TLS on.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Kafka security")]
pub struct TlsOptions {
    /// Connect to the brokers over TLS (implied by any other --tls-* flag;
    /// in the file, the `[kafka.tls]` table itself).
    #[arg(long = "tls", id = "tls")]
    #[serde(skip, default = "present")]
    pub enabled: bool,
    /// PEM file of the CA certificates that sign the brokers' certificates
    /// (default: the Mozilla roots built into the binary).
    #[arg(long = "tls-ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS (with --tls-key-file).
    #[arg(long = "tls-cert-file", value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long = "tls-key-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// `[kafka.sasl]` and the `--sasl*` flags: the table or any flag turns
/// SASL on.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Kafka security")]
pub struct SaslOptions {
    /// Whether the file has the table (no flag of its own).
    #[arg(skip)]
    #[serde(skip, default = "present")]
    pub enabled: bool,
    /// SASL mechanism; turns SASL on.
    #[arg(
        long = "sasl-mechanism",
        env = "PIPELINE_SASL_MECHANISM",
        value_enum,
        ignore_case = true
    )]
    pub mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(long = "sasl-username", env = "PIPELINE_SASL_USERNAME")]
    pub username: Option<String>,
    /// File holding the SASL password; the environment variable
    /// PIPELINE_SASL_PASSWORD wins over it.
    #[arg(long = "sasl-password-file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Allow SASL PLAIN without TLS, which sends the password in clear
    /// text over the network (refused by default).
    #[arg(long = "sasl-allow-plaintext")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext: bool,
}

/// A table read from the file is there: its part is on.
fn present() -> bool {
    true
}

impl TlsOptions {
    /// Whether TLS is asked for.
    pub fn wanted(&self) -> bool {
        self.enabled
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
    }

    /// Nothing set: the table is left out when flags are laid over a file.
    pub fn is_unset(&self) -> bool {
        !self.wanted()
    }
}

impl SaslOptions {
    /// Whether SASL is asked for.
    pub fn wanted(&self) -> bool {
        self.enabled
            || self.mechanism.is_some()
            || self.username.is_some()
            || self.password_file.is_some()
    }

    /// Nothing set: the table is left out when flags are laid over a file.
    pub fn is_unset(&self) -> bool {
        !self.wanted()
    }
}

/// Unusable TLS or SASL settings.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A certificate or key file could not be read or parsed.
    #[error("TLS: cannot use {what} {}: {reason}", path.display())]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// A setting is missing or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The password could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// Builds the transport for these settings: plain TCP when neither is
/// given (or [wanted](TlsOptions::wanted)).
pub fn transport(
    tls: Option<&TlsOptions>,
    sasl: Option<&SaslOptions>,
) -> Result<Transport, SecurityError> {
    let mut t = Transport::plain();
    if let Some(tls) = tls.filter(|o| o.wanted()) {
        t.tls = Some(client_config(tls)?);
    }
    if let Some(sasl) = sasl.filter(|o| o.wanted()) {
        let c = credentials(sasl)?;
        if c.mechanism == SaslMechanism::Plain && t.tls.is_none() && !sasl.allow_plaintext {
            return Err(SecurityError::Invalid(
                "SASL PLAIN without TLS would send the password in clear text: turn TLS on (--tls, [kafka.tls]), use SCRAM-SHA-256/512, or allow it explicitly (--sasl-allow-plaintext, [kafka.sasl] allow_plaintext = true)".into(),
            ));
        }
        t.sasl = Some(c);
    }
    Ok(t)
}

fn credentials(o: &SaslOptions) -> Result<SaslCredentials, SecurityError> {
    let mechanism = o.mechanism.ok_or_else(|| {
        SecurityError::Invalid(
            "SASL: no mechanism given (--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 or [kafka.sasl] mechanism)".into(),
        )
    })?;
    let username = o.username.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
        SecurityError::Invalid(
            "SASL: no user name given (--sasl-username, PIPELINE_SASL_USERNAME or [kafka.sasl] username)".into(),
        )
    })?;
    let password = secret::from_env_or_file(
        "SASL password",
        PASSWORD_ENV,
        o.password_file.as_deref(),
    )?
    .ok_or_else(|| {
        SecurityError::Invalid(format!(
            "SASL: no password for user {username}: set {PASSWORD_ENV} or --sasl-password-file ([kafka.sasl] password_file)"
        ))
    })?;
    Ok(SaslCredentials {
        mechanism,
        username,
        password,
    })
}

fn pem_error<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> SecurityError + 'a {
    move |reason| SecurityError::File {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let fail = pem_error(what, path);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The rustls client configuration for `o`.
pub fn client_config(o: &TlsOptions) -> Result<Arc<ClientConfig>, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    match &o.ca_file {
        Some(path) => {
            let (added, _) =
                roots.add_parsable_certificates(certificates("CA certificates", path)?);
            if added == 0 {
                return Err(pem_error("CA certificates", path)(
                    "none of its certificates can be used as a trust anchor".into(),
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&o.cert_file, &o.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates("client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| pem_error("client key", key)(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SecurityError::Tls(format!("client certificate: {e}")))?
        }
        _ => {
            return Err(SecurityError::Invalid(
                "TLS: a client certificate needs both --tls-cert-file and --tls-key-file".into(),
            ));
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_plain_without_tls_is_refused_unless_allowed() {
        // SAFETY-free: the password comes from a file, not the environment.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret").unwrap();
        let plain = |allow: bool| SaslOptions {
            mechanism: Some(SaslMechanism::Plain),
            username: Some("u".into()),
            password_file: Some(pw.clone()),
            allow_plaintext: allow,
            ..Default::default()
        };
        let msg = transport(None, Some(&plain(false)))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("clear text") && msg.contains("--sasl-allow-plaintext"),
            "{msg}"
        );
        assert!(transport(None, Some(&plain(true))).is_ok());
        let scram = SaslOptions {
            mechanism: Some(SaslMechanism::ScramSha256),
            ..plain(false)
        };
        assert!(
            transport(None, Some(&scram)).is_ok(),
            "SCRAM never sends the password"
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let err = credentials(&SaslOptions {
            mechanism: Some(SaslMechanism::ScramSha256),
            username: Some("u".into()),
            password_file: None,
            ..Default::default()
        });
        // The password may come from the environment of whoever runs the
        // tests; only check the message when it does not.
        if std::env::var(PASSWORD_ENV).is_err() {
            let msg = err.unwrap_err().to_string();
            assert!(
                msg.contains(PASSWORD_ENV) && msg.contains("user u"),
                "{msg}"
            );
        }
        let msg = credentials(&SaslOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no mechanism"), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let msg = client_config(&TlsOptions {
            ca_file: Some(empty),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(msg.contains("no PEM certificate"), "{msg}");
        let msg = client_config(&TlsOptions {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(msg.contains("--tls-key-file"), "{msg}");
    }

    #[test]
    fn default_roots_build() {
        client_config(&TlsOptions::default()).unwrap();
    }
}
