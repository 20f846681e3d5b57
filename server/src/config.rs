//! The server's settings: validated once, before anything binds.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::batcher::BatchConfig;

/// Environment variable the write key is read from when no key file is given.
pub const API_KEY_ENV: &str = "TRIO_API_KEY";

/// Everything `run` and `configure` need besides the backend.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// Key that writes (add, delete, train, activate) must present as `Authorization: Bearer`.
    /// Without one, writes are refused (403): the server has no way to tell who may write.
    pub api_key: Option<ApiKey>,
    /// Whether reads need the key too.
    pub read_auth: bool,
    pub limits: Limits,
    /// How long a request may wait for the backend before it is answered 504. The backend call
    /// itself is not interrupted; it keeps its work-queue slot until it returns.
    pub request_timeout: Duration,
    /// Blocking backend calls allowed at once (outside the batchers). More are shed with 503.
    pub max_in_flight: usize,
    /// Dynamic batching of `/v1/classify` and `/v1/search`.
    pub batch: BatchConfig,
    /// HTTP worker threads (actix workers); 0 means one per core.
    pub workers: usize,
    /// On SIGINT/SIGTERM, how long in-flight requests get to finish.
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's headers; the connection is then closed
    /// with 408.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, from the first read of it; then the
    /// request is answered 408 and the connection closed, so a slow sender cannot hold it.
    pub body_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            read_auth: false,
            limits: Limits::default(),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 64,
            batch: BatchConfig::default(),
            workers: 0,
            shutdown_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// Request size limits. Each is a 413 when exceeded, naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, JSON or multipart (base64 images included).
    pub max_body_bytes: usize,
    /// Largest decoded image, in pixels (`width * height`); checked by the backend's decoder.
    pub max_pixels: u64,
    /// Longest text field (title, description, query text, tag, metadata value), in characters.
    pub max_text_chars: usize,
    /// Largest `k` of a search and `top_k` of a classification.
    pub max_k: usize,
    /// Largest page of `GET /v1/items`.
    pub max_page_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_text_chars: 16 * 1024,
            max_k: 1000,
            max_page_limit: 1000,
        }
    }
}

/// A setting that cannot work, found before the server starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server setting `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.to_string(),
            })
        };
        if self.read_auth && self.api_key.is_none() {
            return err(
                "read_auth",
                "reads cannot require a key when no API key is configured",
            );
        }
        if self.max_in_flight == 0 {
            return err("max_in_flight", "must be at least 1");
        }
        for (field, value) in [
            ("request_timeout", self.request_timeout),
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if value.is_zero() {
                return err(field, "must be longer than zero");
            }
        }
        let l = &self.limits;
        for (field, value) in [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_text_chars", l.max_text_chars),
            ("limits.max_k", l.max_k),
            ("limits.max_page_limit", l.max_page_limit),
        ] {
            if value == 0 {
                return err(field, "must be at least 1");
            }
        }
        if l.max_pixels == 0 {
            return err("limits.max_pixels", "must be at least 1");
        }
        self.batch.validate()
    }
}

/// The API key. Only its SHA-256 digest is kept, compared in constant time; `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    /// A key from its text. Surrounding whitespace (a key file's trailing newline) is not part
    /// of the key; an empty key is refused because every client would match it.
    pub fn new(key: &str) -> Result<ApiKey, ConfigError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError {
                field: "api_key",
                reason: "the API key is empty".to_string(),
            });
        }
        Ok(ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    /// The key from `file` when given, else from `TRIO_API_KEY`, else none.
    pub fn load(file: Option<&Path>) -> Result<Option<ApiKey>, ConfigError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                field: "api_key_file",
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            return ApiKey::new(&text).map(Some);
        }
        match std::env::var(API_KEY_ENV) {
            Ok(text) => ApiKey::new(&text).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError {
                field: "api_key",
                reason: format!("{API_KEY_ENV} is not valid UTF-8"),
            }),
        }
    }

    /// Whether `candidate` is this key, in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        constant_time_eq::constant_time_eq_32(&self.digest, &digest)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_only_itself_and_never_prints() {
        let key = ApiKey::new("s3cret\n").unwrap();
        assert!(key.matches("s3cret"));
        assert!(!key.matches("s3cret "));
        assert!(!key.matches("s3cre"));
        assert!(!key.matches(""));
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!(ApiKey::new(" \n").is_err());
    }

    #[test]
    fn read_auth_without_key_is_refused() {
        let cfg = ServerConfig {
            read_auth: true,
            ..ServerConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field, "read_auth");
        assert!(ServerConfig::default().validate().is_ok());
    }

    #[test]
    fn key_file_wins_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "from-file\n").unwrap();
        let key = ApiKey::load(Some(&path)).unwrap().unwrap();
        assert!(key.matches("from-file"));
        let missing = ApiKey::load(Some(&dir.path().join("absent"))).unwrap_err();
        assert!(missing.reason.contains("absent"), "{missing}");
    }
}
