//! Errors at the hub's boundaries and their one mapping to the contract: error codes for
//! WebSocket replies, HTTP statuses for the server API.

use std::borrow::Cow;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The contract's error codes (docs/protocol.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    LimitExceeded,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, for the metrics that show each at 0 from the start.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A request that failed: a contract code and a human message. The connection (or the HTTP
/// server) stays healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl HubError {
            $(pub fn $name(message: impl Into<Cow<'static, str>>) -> Self {
                HubError { code: ErrorCode::$code, message: message.into() }
            })*
        }
    };
}

constructors! {
    bad_request => BadRequest,
    unknown_type => UnknownType,
    unauthorized => Unauthorized,
    forbidden => Forbidden,
    not_found => NotFound,
    too_large => TooLarge,
    limit_exceeded => LimitExceeded,
    rate_limited => RateLimited,
    unavailable => Unavailable,
    internal => Internal,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for HubError {}

#[derive(Serialize)]
struct ApiErrorBody<'a> {
    error: ApiError<'a>,
}

#[derive(Serialize)]
struct ApiError<'a> {
    code: &'a str,
    message: &'a str,
}

impl ResponseError for HubError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code()).json(ApiErrorBody {
            error: ApiError {
                code: self.code.as_str(),
                message: &self.message,
            },
        });
        // Left for the metrics middleware, which counts errors by code.
        res.extensions_mut().insert(self.code);
        res
    }
}

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The backing store cannot answer now (Redis down, or no answer within the deadline).
    Unavailable(String),
    /// A fault that retrying will not fix.
    Internal(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Unavailable(why) => write!(f, "engine unavailable: {why}"),
            EngineError::Internal(why) => write!(f, "engine fault: {why}"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<EngineError> for HubError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(_) => {
                HubError::unavailable("the hub cannot serve this now; retry later")
            }
            EngineError::Internal(why) => {
                tracing::error!(error = why.as_str(), "engine fault");
                HubError::internal("internal error")
            }
        }
    }
}
