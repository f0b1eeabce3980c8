//! [`ApiError`]: the one place errors become HTTP answers. Internals stay in the logs.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chain::ChainError;
use model::api::{ErrorBody, ErrorDetail, status_of};
use model::chain::TxError;
use model::spec::FieldError;

use crate::shard::{ProposeError, ReadError, SoftError};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    code: String,
    message: String,
    fields: Vec<FieldError>,
    leader: Option<String>,
}

impl ApiError {
    /// An error with `code` (its status comes from `status_of`).
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), fields: Vec::new(), leader: None }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not_found", message)
    }
    /// 500: a bug or a broken disk; the details go to the log only.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new("internal", "internal error; see the control plane's log")
    }
    /// 307 to the leader, or 503 while none is known.
    pub fn not_leader(region: &str, leader: Option<String>) -> Self {
        match leader {
            Some(url) => Self {
                leader: Some(url.clone()),
                ..Self::new("not_leader", format!("this replica does not lead region {region}; its leader is {url}"))
            },
            None => Self::new("no_leader", format!("region {region} has no leader right now; try again shortly")),
        }
    }
    /// 400 `invalid_spec` with the field errors.
    pub fn invalid_spec(message: impl Into<String>, fields: Vec<FieldError>) -> Self {
        Self { fields, ..Self::new("invalid_spec", message) }
    }
    /// The code.
    pub fn code(&self) -> &str {
        &self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(status_of(&self.code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let location = self.leader.clone();
        let detail = ErrorDetail { code: self.code, message: self.message, fields: self.fields, leader: self.leader };
        let mut resp = (status, axum::Json(ErrorBody { error: detail })).into_response();
        if let Some(url) = location
            && let Ok(v) = HeaderValue::from_str(&url)
        {
            // Plain HTTP clients (curl -L) follow this to the leader's base URL.
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }
}

impl From<TxError> for ApiError {
    fn from(e: TxError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<ChainError> for ApiError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Rejected { code, message } => Self::new(&code, message),
            ChainError::Busy(m) => Self::new("busy", m),
            ChainError::Unavailable { .. } => Self::new("chain_unavailable", e.to_string()),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { region, leader_api, .. } => Self::not_leader(&region, leader_api),
            ProposeError::Timeout { .. } => Self::new("not_committed", e.to_string()),
            ProposeError::Membership { .. } => Self::bad_request(e.to_string()),
            ProposeError::Raft { .. } => Self::new("unavailable", e.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NoLeader { .. } => Self::new("no_leader", e.to_string()),
            ReadError::Timeout { .. } => Self::new("unavailable", e.to_string()),
        }
    }
}

impl From<SoftError> for ApiError {
    fn from(e: SoftError) -> Self {
        match e {
            SoftError::NotLeader { region, leader_api } => Self::not_leader(&region, leader_api),
            SoftError::WarmingUp { .. } => Self::new("warming_up", e.to_string()),
            SoftError::Busy { .. } => Self::new("busy", e.to_string()),
        }
    }
}

impl From<client::ClientError> for ApiError {
    fn from(e: client::ClientError) -> Self {
        match e {
            client::ClientError::NotFound { message } => Self::not_found(message),
            client::ClientError::Api { code, message, fields, .. } => Self { fields, ..Self::new(&code, message) },
            other => Self::new("unavailable", other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_uploads_are_client_errors() {
        for code in ["invalid_module", "invalid_archive"] {
            let status = ApiError::new(code, "refused").into_response().status();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{code}");
        }
    }
}
