//! Secrets (SASL passwords, the admin token): read from an environment
//! variable or a file, never from a flag (flags show up in `ps`), and held
//! in a type whose `Debug` form hides the value, so no log line or error
//! message can carry one.

use std::path::{Path, PathBuf};

/// A secret value. `Debug` prints `<redacted>`; [`Secret::expose`] is the
/// only way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret, compared in constant time (only
    /// the length can show in the timing).
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        /// What the secret is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error("the {what} file {} is empty", path.display())]
    Empty {
        /// What the secret is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// The secret in environment variable `env` when it is set and not empty,
/// else the contents of `file` (surrounding whitespace trimmed), else `None`.
pub fn from_env_or_file(
    what: &'static str,
    env: &str,
    file: Option<&Path>,
) -> Result<Option<Secret>, SecretError> {
    if let Ok(v) = std::env::var(env)
        && !v.is_empty()
    {
        return Ok(Some(Secret(v)));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(Some(Secret(value.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_is_trimmed_and_empty_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "  s3cret\n").unwrap();
        let got = from_env_or_file("test", "PIPELINE_TEST_UNSET_SECRET", Some(&f)).unwrap();
        assert_eq!(got.unwrap().expose(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        let err = from_env_or_file("test", "PIPELINE_TEST_UNSET_SECRET", Some(&f)).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        assert!(
            from_env_or_file("test", "PIPELINE_TEST_UNSET_SECRET", None)
                .unwrap()
                .is_none()
        );
    }
}
