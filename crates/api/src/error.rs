//! `ApiError`: every error the API sends, in OpenAI's shape
//! `{"error":{"message","type","param","code"}}`, rendered from the code table in
//! `maasbox_types::ErrorCode`. Internal failures are logged with their cause and answered with
//! a generic message, so no path or SQL reaches a client.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maasbox_store::StoreError;
use maasbox_types::ErrorCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Which error.
    pub code: ErrorCode,
    /// Human-readable message (safe to show).
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// Seconds to wait before retrying (sets `Retry-After`).
    pub retry_after: Option<u64>,
}

/// The JSON body of every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// OpenAI's error object.
#[derive(Serialize, ToSchema)]
pub struct ErrorObject {
    /// What went wrong.
    pub message: String,
    /// Error class (`invalid_request_error`, `authentication_error`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// Stable machine-readable code.
    pub code: String,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), param: None, retry_after: None }
    }

    /// Name the field at fault.
    pub fn param(mut self, p: impl Into<String>) -> Self {
        self.param = Some(p.into());
        self
    }

    /// Set `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// A field failed validation.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidField, message).param(param)
    }

    /// 403 with a standard message.
    pub fn forbidden() -> Self {
        Self::new(ErrorCode::Forbidden, "your role does not allow this action")
    }

    /// 404 for a kind of thing.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// A failure inside the server: log `cause` with the current span, answer generically.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal server error; see the server log for details")
    }

    /// The body as JSON text.
    pub fn body(&self) -> ErrorBody {
        let info = self.code.info();
        ErrorBody {
            error: ErrorObject {
                message: self.message.clone(),
                kind: info.kind.to_owned(),
                param: self.param.clone(),
                code: info.code.to_owned(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.info().code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.info().status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            StoreError::LastAdmin => ApiError::new(ErrorCode::LastAdmin, e.to_string()),
            StoreError::Invalid(m) => ApiError::new(ErrorCode::InvalidField, m),
            StoreError::Closed => ApiError::new(ErrorCode::Unavailable, "the server is shutting down"),
            other => {
                metrics::counter!("maasbox_db_errors_total").increment(1);
                ApiError::internal(other)
            }
        }
    }
}

/// `Result` with [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body extractor whose rejections are OpenAI-shaped and name the offending field.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

/// Deserialize a JSON value into `T` with the same OpenAI-shaped, field-naming errors as
/// [`ApiJson`] (for handlers that look at the raw body first).
pub fn from_value<T: DeserializeOwned>(v: serde_json::Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let detail = if path == "." { inner } else { format!("{path}: {inner}") };
        let param = field_from_serde(&detail);
        let mut err = ApiError::new(ErrorCode::InvalidField, detail);
        err.param = param;
        err
    })
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => {
            // axum reports "Failed to deserialize …: <path>: <serde message>".
            let text = e.body_text();
            let detail = text.split_once("target type: ").map(|(_, d)| d).unwrap_or(&text).to_owned();
            let param = field_from_serde(&detail);
            let mut err = ApiError::new(ErrorCode::InvalidField, detail);
            err.param = param;
            err
        }
        JsonRejection::JsonSyntaxError(e) => {
            let text = e.body_text();
            let detail = text.split_once(": ").map(|(_, d)| d).unwrap_or(&text);
            ApiError::new(ErrorCode::InvalidJson, format!("request body is not valid JSON: {detail}"))
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "expected a body with Content-Type: application/json")
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is larger than the configured limit")
        }
        other => ApiError::new(ErrorCode::InvalidRequest, other.body_text()),
    }
}

/// Pull a field name out of a serde message: "missing field `x`", "unknown field `x`", or a
/// path prefix "x.y: invalid type …".
fn field_from_serde(msg: &str) -> Option<String> {
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = msg.split(marker).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    let (path, _) = msg.split_once(": ")?;
    (!path.contains(' ') && path != ".").then(|| path.to_owned())
}

/// Turn any error response that is not already JSON (405 from the router, 408 from the
/// timeout layer, 413 from the body limit, …) into the OpenAI error shape.
pub async fn normalize_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::UnknownRoute,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::Timeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    };
    let message = match code {
        ErrorCode::UnknownRoute => "no such endpoint; see /openapi.json for the API".to_owned(),
        ErrorCode::MethodNotAllowed => "this endpoint does not accept that HTTP method".to_owned(),
        ErrorCode::PayloadTooLarge => "request body is larger than the configured limit".to_owned(),
        ErrorCode::Timeout => "the request took longer than the configured timeout".to_owned(),
        ErrorCode::Internal => "internal server error; see the server log for details".to_owned(),
        _ => status.canonical_reason().unwrap_or("bad request").to_lowercase(),
    };
    let mut out = ApiError::new(code, message).into_response();
    *out.status_mut() = status;
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_field_names_are_extracted() {
        assert_eq!(field_from_serde("missing field `username` at line 1").as_deref(), Some("username"));
        assert_eq!(field_from_serde("role: unknown variant `boss`").as_deref(), Some("role"));
        assert_eq!(field_from_serde("invalid type: integer, expected a string").as_deref(), None);
    }
}
