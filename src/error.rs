//! The HTTP-boundary error: every failure a handler or middleware reports, with one
//! status per variant, answered as `{"error": "<code>", "message": "<sentence>", ...}`.

use crate::config::ValidationError;
use crate::config::file::FileError;
use crate::config::writer::WriteError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use std::fmt;

/// Every error's body: `{"error": "<snake_case_code>", "message": "<sentence>"}`, with the
/// field a validation failed on, and the line of a refused config file.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `validation_failed`, `not_found`, `conflict`, `invalid_json`, ...
    pub error: &'static str,
    /// A sentence for a person.
    pub message: String,
    /// The field a validation failed on (`requests_per_window`, `checks[2].cost`); for
    /// a refused config file, null when no field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<Option<String>>,
    /// A refused config file: the line of the entry, null when the file as a whole was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<Option<usize>>,
}

/// The body of a 429: who was refused, under which config, and until when.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Refusal {
    /// Always `rate_limit_exceeded`.
    pub error: &'static str,
    pub message: String,
    pub client_id: String,
    /// The config whose limit was reached.
    pub endpoint: String,
    pub limit: u64,
    /// Always 0.
    pub remaining: u64,
    /// Seconds until a request would be allowed again (at least 1).
    pub retry_after: u64,
    /// When the quota is fully restored (RFC 3339).
    pub reset_time: String,
    /// Under a config of several limits: the names of those that refused (`limit`,
    /// `retry_after` and `reset_time` are of the one with the longest wait).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violated: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 400 with a specific code (`invalid_json`, `invalid_client_id`, ...).
    BadRequest {
        code: &'static str,
        message: String,
    },
    /// 422: a config broke a rule.
    Validation(ValidationError),
    /// 422: the config file was refused (with its line and field).
    InvalidFile(FileError),
    NotFound(String),
    /// 405.
    MethodNotAllowed,
    Conflict(String),
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 403: admin access from a non-loopback peer with no token configured.
    Forbidden,
    /// 403: a WebSocket upgrade from a page of another origin.
    ForbiddenOrigin,
    /// 403: no token is configured and the request addressed a host that is neither
    /// loopback nor in `--allowed-hosts` (a DNS-rebinding page, or a public name).
    ForbiddenHost,
    /// 429: this IP address holds the most live-feed subscriptions allowed.
    TooManySubscribers(usize),
    /// 413.
    PayloadTooLarge {
        limit: u64,
    },
    /// 415.
    UnsupportedMediaType,
    /// 503: a component needed for the answer is not answering.
    Unavailable(String),
    /// 503: the client's limiter did not decide in time and `--on-error deny` is set.
    LimiterUnavailable,
    /// 501: something this server does not do (proxying a protocol upgrade).
    NotImplemented(String),
    /// 502: reverse-proxy mode, the upstream could not be reached or broke off.
    BadGateway(String),
    /// 504: reverse-proxy mode, the upstream did not answer within its timeout.
    GatewayTimeout(String),
    /// 500: a fault of the server, never of the request.
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Validation(_) => "validation_failed",
            ApiError::InvalidFile(_) => "invalid_config_file",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden | ApiError::ForbiddenOrigin => "forbidden",
            ApiError::ForbiddenHost => "forbidden_host",
            ApiError::TooManySubscribers(_) => "too_many_subscribers",
            ApiError::LimiterUnavailable => "limiter_unavailable",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::GatewayTimeout(_) => "gateway_timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl From<crate::access::Refused> for ApiError {
    fn from(r: crate::access::Refused) -> Self {
        match r {
            crate::access::Refused::Unauthorized => ApiError::Unauthorized,
            crate::access::Refused::Forbidden => ApiError::Forbidden,
            crate::access::Refused::ForeignHost => ApiError::ForbiddenHost,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::BadRequest { message, .. }
            | ApiError::NotFound(message)
            | ApiError::Conflict(message)
            | ApiError::Unavailable(message)
            | ApiError::NotImplemented(message)
            | ApiError::BadGateway(message)
            | ApiError::GatewayTimeout(message) => f.write_str(message),
            ApiError::Validation(v) => write!(f, "{} {}", v.field, v.message),
            ApiError::InvalidFile(e) => write!(
                f,
                "The config file was refused, and the running configs keep serving: {e}."
            ),
            ApiError::MethodNotAllowed => f.write_str("This method is not allowed here."),
            ApiError::Unauthorized => {
                f.write_str("A valid bearer token is required (the admin token; on /v1 also the decision token): Authorization: Bearer <token>.")
            }
            ApiError::Forbidden => f.write_str(
                "No admin token is configured, so the admin API only answers loopback clients.",
            ),
            ApiError::ForbiddenHost => f.write_str(
                "No admin token is configured, so this path answers only requests addressed to a loopback name (localhost, 127.0.0.1, [::1]) or to a name in --allowed-hosts (RATEWARDEN_ALLOWED_HOSTS); set --admin-token (ADMIN_TOKEN) to reach it through any name.",
            ),
            ApiError::ForbiddenOrigin => f.write_str(
                "Only pages of this server's origin (see --allowed-origins) may open its feeds or change anything through it.",
            ),
            ApiError::TooManySubscribers(n) => write!(
                f,
                "This address has {n} live feeds open, the most allowed; close one first."
            ),
            ApiError::LimiterUnavailable => f.write_str(
                "The rate limiter could not decide in time, and this server denies requests then. Retry shortly.",
            ),
            ApiError::PayloadTooLarge { limit } => {
                write!(f, "The request body is larger than {limit} bytes.")
            }
            ApiError::UnsupportedMediaType => {
                f.write_str("The request body must be JSON (Content-Type: application/json).")
            }
            ApiError::Internal(_) => f.write_str("The server failed; the request changed nothing."),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) | ApiError::InvalidFile(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::ForbiddenOrigin | ApiError::ForbiddenHost => {
                StatusCode::FORBIDDEN
            }
            ApiError::TooManySubscribers(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            log::error!("internal error: {detail}");
        }
        let mut body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            field: None,
            line: None,
        };
        if let ApiError::Validation(v) = self {
            body.field = Some(Some(v.field.clone()));
            body.message = format!("{} {}.", v.field, v.message);
        }
        if let ApiError::InvalidFile(e) = self {
            body.line = Some(e.line);
            body.field = Some(e.field.clone());
        }
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            ApiError::LimiterUnavailable => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            _ => {}
        }
        res.json(body)
    }
}

impl From<ValidationError> for ApiError {
    fn from(v: ValidationError) -> Self {
        ApiError::Validation(v)
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(v) => ApiError::Validation(v),
            WriteError::InvalidFile(f) => ApiError::InvalidFile(f),
            WriteError::Unavailable(m) => ApiError::Unavailable(m),
            WriteError::NotFound(m) => ApiError::NotFound(m),
            WriteError::Conflict(m) => ApiError::Conflict(m),
        }
    }
}

impl From<crate::report::Unavailable> for ApiError {
    fn from(e: crate::report::Unavailable) -> Self {
        ApiError::Unavailable(e.0)
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Unavailable(format!("The database is not answering ({e})."))
    }
}
