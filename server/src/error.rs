//! Every error a client sees, and the one place engine errors become HTTP statuses.
//!
//! The body is always `{"error": {"code": "snake_case", "message": "..."}}`. Codes are stable
//! (clients branch on them); messages name the field, item or limit at fault. Internal failures
//! are logged in full and answered with a message that leaks no paths.

use std::fmt;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use trio_engine::towers::image::ImageProblem;
use trio_engine::Error as EngineError;

use crate::api::{ErrorBody, ErrorDetail};
use crate::batcher::BatchError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    // -- 400 --

    pub fn invalid_json(detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("request body is not valid JSON: {detail}"),
        )
    }

    /// Well-formed JSON of the wrong shape: an unknown or missing field, a wrong type.
    pub fn invalid_body(detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("request body does not match the expected fields: {detail}"),
        )
    }

    pub fn invalid_query(detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("invalid query string: {detail}"),
        )
    }

    pub fn invalid_multipart(detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            format!("invalid multipart body: {detail}"),
        )
    }

    pub fn invalid_argument(field: &str, detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("`{field}`: {detail}"),
        )
    }

    pub fn missing_input(detail: impl fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "missing_input", detail.to_string())
    }

    // -- 401 / 403 --

    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn writes_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "writes_disabled",
            "this server has no API key configured, so it accepts no writes; start it with \
             TRIO_API_KEY or --api-key-file",
        )
    }

    // -- 404 / 405 --

    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no route for {path}; see /openapi.json"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; see /openapi.json"),
        )
    }

    // -- 408 --

    pub fn body_timeout(after: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms",
                after.as_millis()
            ),
        )
    }

    // -- 413 / 415 --

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn text_too_long(field: &str, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text_too_long",
            format!("`{field}` is longer than the limit of {limit} characters"),
        )
    }

    pub fn unsupported_media_type(got: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type `{got}` is not accepted here; send {expected}"),
        )
    }

    // -- 5xx --

    /// The backend cannot serve yet (models or indexes still loading): what
    /// [`crate::Backend::ready`] answers until it can.
    pub fn not_ready(reason: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("not ready: {reason}"),
        )
    }

    pub fn overloaded(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("{what} is at capacity; retry shortly"),
        )
    }

    pub fn timeout(what: &str, after: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("{what} did not finish within {} ms", after.as_millis()),
        )
    }

    /// A failure that is our bug, not the client's: logged, and answered without details.
    pub fn internal(context: &str, detail: impl fmt::Display) -> Self {
        tracing::error!(context, error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error during {context}; the server log has details"),
        )
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            StatusCode::REQUEST_TIMEOUT => {
                response.force_close();
            }
            _ => {}
        }
        response.json(self.body())
    }
}

/// The mapping from engine errors to statuses. Variants the server does not know (the enum is
/// non-exhaustive) are internal errors.
impl From<&EngineError> for ApiError {
    fn from(e: &EngineError) -> Self {
        use StatusCode as S;
        let (status, code) = match e {
            // The engine names the image by its file path; a client needs only the problem.
            EngineError::Image { problem, .. } => {
                return match problem {
                    ImageProblem::TooManyPixels { .. } => ApiError::new(
                        S::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!("image is too large: {problem}"),
                    ),
                    _ => ApiError::new(
                        S::UNSUPPORTED_MEDIA_TYPE,
                        "not_an_image",
                        format!("not a decodable image: {problem}"),
                    ),
                };
            }
            EngineError::InvalidArgument(_)
            | EngineError::BadItemId { .. }
            | EngineError::InvalidTrainConfig { .. } => (S::BAD_REQUEST, "invalid_argument"),
            EngineError::ImageMissing { .. } => (S::NOT_FOUND, "image_missing"),
            EngineError::NotFound { .. } => (S::NOT_FOUND, "not_found"),
            EngineError::Conflict { .. } => (S::CONFLICT, "conflict"),
            EngineError::NoModel { .. } => (S::CONFLICT, "no_model"),
            EngineError::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "too_large"),
            EngineError::NotAnImage { .. } => (S::UNSUPPORTED_MEDIA_TYPE, "not_an_image"),
            EngineError::UnknownLabel { .. } => (S::UNPROCESSABLE_ENTITY, "unknown_label"),
            EngineError::DeviceUnavailable { .. } => (S::SERVICE_UNAVAILABLE, "device_unavailable"),
            other => return ApiError::internal("a backend call", other),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::from(&e)
    }
}

impl From<BatchError<EngineError>> for ApiError {
    fn from(e: BatchError<EngineError>) -> Self {
        match e {
            BatchError::Failed(inner) => ApiError::from(&*inner),
            BatchError::Overloaded { batcher } => {
                ApiError::overloaded(&format!("the {batcher} queue"))
            }
            BatchError::Stopped { batcher } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("the {batcher} worker has stopped; the server is shutting down"),
            ),
            other @ (BatchError::Panicked { .. } | BatchError::WrongCount { .. }) => {
                ApiError::internal("a batched backend call", other)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_their_statuses() {
        let cases = [
            (
                EngineError::NotFound {
                    what: "item".into(),
                    id: "a1".into(),
                },
                404,
                "not_found",
            ),
            (
                EngineError::Conflict {
                    what: "item".into(),
                    id: "a1".into(),
                    reason: "exists".into(),
                },
                409,
                "conflict",
            ),
            (
                EngineError::UnknownLabel {
                    label: "zebra".into(),
                },
                422,
                "unknown_label",
            ),
            (
                EngineError::NotAnImage {
                    reason: "bad magic".into(),
                },
                415,
                "not_an_image",
            ),
            (
                EngineError::TooLarge {
                    what: "image".into(),
                    limit: 10,
                },
                413,
                "too_large",
            ),
            (
                EngineError::InvalidArgument("k must be positive".into()),
                400,
                "invalid_argument",
            ),
            (
                EngineError::io("/secret/path", std::io::Error::other("disk")),
                500,
                "internal",
            ),
            // The server opens its catalogue with towers: without them is its own fault.
            (
                EngineError::NoTowers {
                    what: "embedding items and queries",
                },
                500,
                "internal",
            ),
        ];
        for (engine, status, code) in cases {
            let api = ApiError::from(&engine);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{engine}");
            if status == 500 {
                assert!(!api.message.contains("/secret/path"), "{}", api.message);
            } else {
                assert_eq!(api.message, engine.to_string());
            }
        }
    }

    #[test]
    fn not_ready_is_a_503_with_its_reason() {
        let api = ApiError::not_ready("loading");
        assert_eq!((api.status.as_u16(), api.code), (503, "not_ready"));
        assert_eq!(api.message, "not ready: loading");
        let response = api.error_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }

    #[test]
    fn ids_over_the_store_limit_are_a_400_naming_it() {
        let e = EngineError::BadItemId {
            id: "x".repeat(64),
            reason: "it is longer than 1024 bytes".into(),
        };
        let api = ApiError::from(&e);
        assert_eq!((api.status.as_u16(), api.code), (400, "invalid_argument"));
        assert!(api.message.contains("1024"), "{}", api.message);
    }

    #[test]
    fn image_errors_are_415_or_413_without_the_file_path() {
        let secret = "/srv/trio/catalog.trio.images/0123abcd.png";
        let corrupt = EngineError::Image {
            image: secret.into(),
            problem: ImageProblem::Truncated {
                detail: "unexpected end of file".into(),
            },
        };
        let api = ApiError::from(&corrupt);
        assert_eq!((api.status.as_u16(), api.code), (415, "not_an_image"));
        assert!(!api.message.contains(secret), "{}", api.message);
        assert!(api.message.contains("truncated"), "{}", api.message);

        let huge = EngineError::Image {
            image: secret.into(),
            problem: ImageProblem::TooManyPixels {
                width: 10,
                height: 10,
                limit: 50,
            },
        };
        let api = ApiError::from(&huge);
        assert_eq!((api.status.as_u16(), api.code), (413, "too_large"));
        assert!(!api.message.contains(secret), "{}", api.message);
    }

    #[test]
    fn a_missing_image_file_is_a_404_of_its_own() {
        let api = ApiError::from(&EngineError::ImageMissing { id: "a1".into() });
        assert_eq!((api.status.as_u16(), api.code), (404, "image_missing"));
        assert!(api.message.contains("a1"), "{}", api.message);
    }
}
