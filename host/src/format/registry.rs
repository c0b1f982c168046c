//! A client of the Confluent Schema Registry REST API (what Confluent's
//! registry, Apicurio's `/apis/ccompat/v7`, Karapace and Redpanda serve):
//! schemas by id with their references, a subject's versions, register,
//! look up, and the compatibility check.
//!
//! Written here on hyper and rustls (the host's TLS stack, ring provider):
//! the crates that wrap this API pull OpenSSL (`schema_registry_converter`
//! defaults to native-tls) or aws-lc (`schema-registry-client` through
//! reqwest), which the static musl build cannot take.
//!
//! Every call has a timeout. [`RegistryError::transient`] tells what a
//! caller waits out and retries (the registry is down, slow, or answers
//! 5xx or 429) from what the registry has decided (404: no such schema).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::kafka::security::{TlsOptions, client_config};
use crate::secret::Secret;

/// How to reach the registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Base URL of the Confluent-compatible API, e.g.
    /// `http://127.0.0.1:8081` or `http://host/apis/ccompat/v7`.
    pub url: String,
    /// Credentials, if the registry wants them.
    pub auth: Option<Auth>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// CA and client certificates for an `https` URL.
    pub tls: TlsOptions,
}

/// Registry credentials.
#[derive(Debug, Clone)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// A bearer token.
    Bearer(Secret),
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot be reached, timed out, or answered 5xx or 429:
    /// wait and retry.
    #[error("schema registry {url} unavailable: {why}")]
    Unavailable {
        /// The request URL.
        url: String,
        /// What happened.
        why: String,
    },
    /// 404: the schema id, subject or version does not exist.
    #[error("schema registry {url}: not found ({message})")]
    NotFound {
        /// The request URL.
        url: String,
        /// The registry's message.
        message: String,
    },
    /// Any other answer the registry gives for good (401, 403, 409, 422):
    /// the request or the credentials must change.
    #[error("schema registry {url} refused: HTTP {status}: {message}")]
    Refused {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The settings cannot be used (a malformed URL, TLS files).
    #[error("schema registry settings: {0}")]
    Settings(String),
}

impl RegistryError {
    /// True for what waiting fixes.
    pub fn transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// The kinds of schema a registry holds (`schemaType`; absent means Avro).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    /// Apache Avro.
    #[default]
    Avro,
    /// Protocol Buffers.
    Protobuf,
    /// JSON Schema.
    Json,
}

/// A reference from a schema to another registered one (a named type or
/// an imported file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// The name the schema uses (a type name, or a .proto file name).
    pub name: String,
    /// The subject it is registered under.
    pub subject: String,
    /// Its version there.
    pub version: i32,
}

/// A schema as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredSchema {
    /// The schema text.
    pub schema: String,
    /// Its kind.
    #[serde(default)]
    pub schema_type: SchemaType,
    /// The schemas it refers to.
    #[serde(default)]
    pub references: Vec<Reference>,
}

/// A subject's version.
#[derive(Debug, Clone, Deserialize)]
pub struct SubjectVersion {
    /// The schema's global id.
    pub id: u32,
    /// The version within the subject.
    pub version: i32,
    /// The schema.
    #[serde(flatten)]
    pub schema: RegisteredSchema,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct Compatibility {
    is_compatible: bool,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    message: String,
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The registry client: cheap to clone, one connection pool.
#[derive(Clone)]
pub struct Registry {
    base: String,
    auth: Option<String>,
    timeout: Duration,
    client: Client<Https, Full<Bytes>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.base).finish()
    }
}

impl Registry {
    /// A client for `settings`.
    pub fn new(settings: &RegistrySettings) -> Result<Self, RegistryError> {
        let base = settings.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RegistryError::Settings(format!(
                "URL {base} must start with http:// or https://"
            )));
        }
        let tls = client_config(&settings.tls)
            .map_err(|e| RegistryError::Settings(format!("TLS: {e}")))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        use base64::Engine as _;
        let auth = settings.auth.as_ref().map(|a| match a {
            Auth::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose()))
            ),
            Auth::Bearer(token) => format!("Bearer {}", token.expose()),
        });
        Ok(Self {
            base,
            auth,
            timeout: settings.timeout,
            client,
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema with global id `id` (`GET /schemas/ids/{id}`).
    pub async fn schema(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        self.call(Method::GET, &format!("/schemas/ids/{id}"), None)
            .await
    }

    /// Version `version` (a number or `latest`) of `subject`.
    pub async fn version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        let path = format!("/subjects/{}/versions/{version}", encode(subject));
        self.call(Method::GET, &path, None).await
    }

    /// Registers `schema` under `subject` (or finds it there): its id.
    pub async fn register(
        &self,
        subject: &str,
        schema: &RegisteredSchema,
    ) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", encode(subject));
        let answer: IdAnswer = self.call(Method::POST, &path, Some(body(schema))).await?;
        Ok(answer.id)
    }

    /// The id of `schema` if it is registered under `subject`
    /// (`POST /subjects/{subject}`); [`RegistryError::NotFound`] if not.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &RegisteredSchema,
    ) -> Result<SubjectVersion, RegistryError> {
        let path = format!("/subjects/{}", encode(subject));
        self.call(Method::POST, &path, Some(body(schema))).await
    }

    /// Whether `schema` is compatible with the latest version of `subject`
    /// under the subject's compatibility rule.
    pub async fn compatible(
        &self,
        subject: &str,
        schema: &RegisteredSchema,
    ) -> Result<bool, RegistryError> {
        let path = format!(
            "/compatibility/subjects/{}/versions/latest",
            encode(subject)
        );
        let answer: Compatibility = self.call(Method::POST, &path, Some(body(schema))).await?;
        Ok(answer.is_compatible)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RegistryError> {
        let url = format!("{}{path}", self.base);
        let unavailable = |why: String| RegistryError::Unavailable {
            url: url.clone(),
            why,
        };
        let mut req = Request::builder().method(method).uri(&url).header(
            "accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if body.is_some() {
            req = req.header("content-type", "application/vnd.schemaregistry.v1+json");
        }
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RegistryError::Settings(format!("{url}: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unavailable(error_chain(&e)))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .to_bytes();
            Ok::<_, RegistryError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unavailable(format!("no answer within {:?}", self.timeout)))??;
        let message = || {
            serde_json::from_slice::<ErrorAnswer>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect())
        };
        match status {
            s if s.is_success() => serde_json::from_slice(&bytes)
                .map_err(|e| unavailable(format!("unreadable answer: {e}"))),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                url,
                message: message(),
            }),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Err(unavailable(format!("HTTP {}: {}", s.as_u16(), message())))
            }
            s => Err(RegistryError::Refused {
                url,
                status: s.as_u16(),
                message: message(),
            }),
        }
    }
}

fn body(schema: &RegisteredSchema) -> Vec<u8> {
    serde_json::to_vec(schema).expect("serializable")
}

/// A subject in a URL path (subjects may hold `/`, `:` or spaces).
fn encode(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its causes, for a connection failure.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_escaped_in_paths() {
        assert_eq!(encode("user-login-value"), "user-login-value");
        assert_eq!(encode("a/b c:d"), "a%2Fb%20c%3Ad");
    }

    #[test]
    fn a_schema_without_a_type_is_avro() {
        let s: RegisteredSchema = serde_json::from_str(r#"{"schema":"\"int\""}"#).unwrap();
        assert_eq!(s.schema_type, SchemaType::Avro);
        let p: RegisteredSchema =
            serde_json::from_str(r#"{"schema":"syntax","schemaType":"PROTOBUF","references":[{"name":"a.proto","subject":"a","version":1}]}"#)
                .unwrap();
        assert_eq!(p.schema_type, SchemaType::Protobuf);
        assert_eq!(p.references[0].version, 1);
    }
}
