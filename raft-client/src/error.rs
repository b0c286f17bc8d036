//! [`ClientError`]: everything a [`Client`](crate::Client) call can fail with.

use std::time::Duration;

use crate::api::{ApiError, ErrorCode, KeyValue};

/// Why a client call failed.
///
/// Retryable failures (transport errors, timeouts, `503`/`504` answers, `not_leader`) are
/// retried inside the call up to `max_retries` times; what reaches the caller is either a
/// non-retryable failure, returned at once, or [`ClientError::RetriesExhausted`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error. `status` is the HTTP status (for an error event of
    /// a watch stream, the status its code maps to).
    #[error("{error} (HTTP {status})")]
    Api {
        /// HTTP status of the answer.
        status: u16,
        /// The error body (synthesized from the status when the body was not an `ApiError`).
        error: Box<ApiError>,
    },
    /// The request did not get an answer: connection refused or reset, DNS failure, or the
    /// connection broke while reading the body. A write's outcome is unknown.
    #[error("transport error talking to {endpoint}: {source}")]
    Transport {
        /// The endpoint the request was sent to.
        endpoint: String,
        /// What the HTTP client reported.
        #[source]
        source: reqwest::Error,
    },
    /// No answer within the request timeout (or, on a watch, no bytes within the idle
    /// timeout). A write's outcome is unknown.
    #[error("no answer from {endpoint} within {after:?}")]
    Timeout {
        /// The endpoint the request was sent to.
        endpoint: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The client was built with an empty endpoint list.
    #[error("no endpoint given")]
    NoEndpoint,
    /// An endpoint (given, or from a leader hint or redirect) could not be used.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given (at most 200 characters).
        endpoint: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The client options are inconsistent.
    #[error("invalid client options: {0}")]
    InvalidOptions(&'static str),
    /// A compare-and-swap's expectation did not hold; nothing was written.
    #[error("compare-and-swap failed: the key is {}", describe_current(current.as_ref()))]
    CasFailed {
        /// The key's state when the comparison was made (`None`: absent).
        current: Option<KeyValue>,
    },
    /// The server's answer could not be understood (bad JSON, a body over the size limit, a
    /// malformed event stream, a redirect without a usable `Location`).
    #[error("undecodable answer: {0}")]
    Decode(String),
    /// Every attempt failed with a retryable error; `last` is the last one. A write's outcome
    /// is unknown (a later write of the same client may still see it applied).
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many requests were sent.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<ClientError>,
    },
}

fn describe_current(current: Option<&KeyValue>) -> String {
    match current {
        None => "absent".to_owned(),
        Some(kv) => format!("at version {} with value {:?}", kv.version, kv.value),
    }
}

impl ClientError {
    /// A short stable name of the failure: the API's [`ErrorCode`] in snake case when the
    /// server answered (`cas_failed`, `not_found`, ...), otherwise `transport`, `timeout`,
    /// `no_endpoint`, `invalid_endpoint`, `invalid_options` or `decode`. For
    /// [`ClientError::RetriesExhausted`], the code of the last error.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Api { error, .. } => error_code_name(error.code),
            ClientError::Transport { .. } => "transport",
            ClientError::Timeout { .. } => "timeout",
            ClientError::NoEndpoint => "no_endpoint",
            ClientError::InvalidEndpoint { .. } => "invalid_endpoint",
            ClientError::InvalidOptions(_) => "invalid_options",
            ClientError::CasFailed { .. } => "cas_failed",
            ClientError::Decode(_) => "decode",
            ClientError::RetriesExhausted { last, .. } => last.code(),
        }
    }

    /// The API error code, when the server answered with one (also inside
    /// [`ClientError::RetriesExhausted`]).
    pub fn api_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            ClientError::CasFailed { .. } => Some(ErrorCode::CasFailed),
            ClientError::RetriesExhausted { last, .. } => last.api_code(),
            _ => None,
        }
    }

    /// Whether this error is the state machine's answer to an applied write (`cas_failed`,
    /// `not_found`): the write took its place in the log, its session number is used.
    pub fn was_applied(&self) -> bool {
        match self {
            ClientError::Api { error, .. } => {
                matches!(error.code, ErrorCode::CasFailed | ErrorCode::NotFound)
            }
            ClientError::CasFailed { .. } => true,
            _ => false,
        }
    }

    /// Whether the same request may be sent again (to another node or after a pause); for a
    /// write, with the same session sequence number, which the client does by itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { error, .. } => error.is_retryable(),
            ClientError::Transport { .. } | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// The snake-case name of an error code, as on the wire.
pub fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotLeader => "not_leader",
        ErrorCode::NoLeader => "no_leader",
        ErrorCode::NoQuorum => "no_quorum",
        ErrorCode::Timeout => "timeout",
        ErrorCode::Busy => "busy",
        ErrorCode::UnknownOutcome => "unknown_outcome",
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::MethodNotAllowed => "method_not_allowed",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::NotFound => "not_found",
        ErrorCode::CasFailed => "cas_failed",
        ErrorCode::Conflict => "conflict",
        ErrorCode::NotCaughtUp => "not_caught_up",
        ErrorCode::UnsafeChange => "unsafe_change",
        ErrorCode::StaleSequence => "stale_sequence",
        ErrorCode::Compacted => "compacted",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Unauthenticated => "unauthenticated",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::Internal => "internal",
        ErrorCode::SessionExpired => "session_expired",
        ErrorCode::NoSpace => "no_space",
        ErrorCode::Unknown => "unknown",
    }
}

/// The error code a status stands for, for answers whose body is not an `ApiError` (a proxy's
/// error page, say).
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    ErrorCode::for_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_match_the_wire() {
        for code in [
            ErrorCode::NotLeader,
            ErrorCode::NoLeader,
            ErrorCode::NoQuorum,
            ErrorCode::Timeout,
            ErrorCode::Busy,
            ErrorCode::BadRequest,
            ErrorCode::MethodNotAllowed,
            ErrorCode::TooLarge,
            ErrorCode::NotFound,
            ErrorCode::CasFailed,
            ErrorCode::Conflict,
            ErrorCode::NotCaughtUp,
            ErrorCode::UnsafeChange,
            ErrorCode::StaleSequence,
            ErrorCode::Compacted,
            ErrorCode::Unavailable,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
            ErrorCode::Internal,
            ErrorCode::SessionExpired,
            ErrorCode::Unknown,
        ] {
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(wire.trim_matches('"'), error_code_name(code));
        }
    }

    #[test]
    fn status_fallbacks_keep_retryability() {
        assert!(code_for_status(503).is_retryable());
        assert!(code_for_status(504).is_retryable());
        assert!(code_for_status(502).is_retryable());
        assert!(!code_for_status(400).is_retryable());
        assert!(!code_for_status(500).is_retryable());
    }

    #[test]
    fn retries_exhausted_reports_the_last_code() {
        let last = ClientError::Api { status: 503, error: Box::new(ApiError::new(ErrorCode::NoLeader, "x")) };
        let e = ClientError::RetriesExhausted { attempts: 3, last: Box::new(last) };
        assert_eq!(e.code(), "no_leader");
        assert_eq!(e.api_code(), Some(ErrorCode::NoLeader));
        assert!(!e.is_retryable());
    }
}
