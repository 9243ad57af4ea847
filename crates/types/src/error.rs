//! The one table of error codes: each code maps to an HTTP status, OpenAI's error `type` and the
//! `code` string clients match on. The API renders every error from this table, so adding a code
//! here is the only way to add an error.

/// What the API needs to render an [`ErrorCode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorInfo {
    /// HTTP status.
    pub status: u16,
    /// OpenAI `error.type`.
    pub kind: &'static str,
    /// OpenAI `error.code`.
    pub code: &'static str,
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident => ($status:expr, $kind:expr, $code:expr);)*) => {
        /// Every error the API can answer with.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
        }

        impl ErrorCode {
            /// Status, type and code for this error.
            pub const fn info(self) -> ErrorInfo {
                match self {
                    $(ErrorCode::$name => ErrorInfo { status: $status, kind: $kind, code: $code },)*
                }
            }

            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];
        }
    };
}

error_codes! {
    /// The request is malformed in a way no more specific code covers.
    InvalidRequest => (400, "invalid_request_error", "invalid_request");
    /// The body is not valid JSON.
    InvalidJson => (400, "invalid_request_error", "invalid_json");
    /// A field is missing, has the wrong type or an invalid value.
    InvalidField => (400, "invalid_request_error", "invalid_value");
    /// The body is not `application/json`.
    UnsupportedMediaType => (415, "invalid_request_error", "unsupported_media_type");
    /// The body exceeds the configured limit.
    PayloadTooLarge => (413, "invalid_request_error", "payload_too_large");
    /// The password does not meet the policy.
    WeakPassword => (400, "invalid_request_error", "weak_password");
    /// No credentials were sent.
    Unauthenticated => (401, "authentication_error", "unauthenticated");
    /// Wrong username or password.
    InvalidCredentials => (401, "authentication_error", "invalid_credentials");
    /// The API key is unknown, revoked, expired or wrong.
    InvalidApiKey => (401, "authentication_error", "invalid_api_key");
    /// The access or refresh token is invalid, expired or revoked.
    InvalidToken => (401, "authentication_error", "invalid_token");
    /// The setup code is wrong.
    InvalidSetupCode => (401, "authentication_error", "invalid_setup_code");
    /// Authenticated, but the role does not allow this.
    Forbidden => (403, "permission_error", "forbidden");
    /// The account must change its password first.
    PasswordChangeRequired => (403, "permission_error", "password_change_required");
    /// The owner token is only accepted from loopback.
    OwnerTokenNotLocal => (403, "permission_error", "owner_token_not_local");
    /// The Host header is not one this server answers to.
    BadHost => (421, "invalid_request_error", "misdirected_request");
    /// The resource does not exist (or is not visible to the caller).
    NotFound => (404, "invalid_request_error", "not_found");
    /// No route matches the path.
    UnknownRoute => (404, "invalid_request_error", "unknown_url");
    /// The route exists but not for this method.
    MethodNotAllowed => (405, "invalid_request_error", "method_not_allowed");
    /// The model does not exist (or is hidden from the caller).
    ModelNotFound => (404, "invalid_request_error", "model_not_found");
    /// The prompt does not fit the model's context.
    ContextLengthExceeded => (400, "invalid_request_error", "context_length_exceeded");
    /// A request field is valid OpenAI but not supported here (yet).
    UnsupportedParameter => (400, "invalid_request_error", "unsupported_parameter");
    /// The request conflicts with the current state (duplicate name, …).
    Conflict => (409, "invalid_request_error", "conflict");
    /// Setup was already completed.
    AlreadySetUp => (409, "invalid_request_error", "already_set_up");
    /// The change would leave no active admin.
    LastAdmin => (409, "invalid_request_error", "last_admin");
    /// Too many requests or failed attempts; see `Retry-After`.
    RateLimited => (429, "requests", "rate_limit_exceeded");
    /// A token quota (per day or month) is used up; see `Retry-After`.
    InsufficientQuota => (429, "insufficient_quota", "insufficient_quota");
    /// The request took longer than the configured timeout.
    Timeout => (408, "invalid_request_error", "request_timeout");
    /// Something failed inside the server; details are in its log, not in the response.
    Internal => (500, "server_error", "internal_error");
    /// Every upstream provider for the model failed (see the message for each one's reason).
    UpstreamFailed => (502, "server_error", "upstream_error");
    /// The server is shutting down or overloaded.
    Unavailable => (503, "server_error", "service_unavailable");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let info = c.info();
            assert!(seen.insert(info.code), "duplicate code {}", info.code);
            assert!((400..600).contains(&info.status), "{c:?}");
        }
    }
}
