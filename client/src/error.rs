//! What a call can fail with.

use model::spec::FieldError;

/// Why a call failed. Match on the variant; the messages are for people.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered 404: no such app, node, block, region or endpoint.
    #[error("{message}")]
    NotFound {
        /// The server's message, which names what is missing.
        message: String,
    },
    /// The server refused the request or failed; `code` is its stable error code.
    #[error("{message} ({status} {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code such as `invalid_spec`, `forbidden`, `stale_nonce`, `no_leader`.
        code: String,
        /// What went wrong.
        message: String,
        /// Field errors of an `invalid_spec`.
        fields: Vec<FieldError>,
    },
    /// No URL could be reached. For a request that is not idempotent this also covers a
    /// connection lost after the request went out, when its outcome is unknown.
    #[error("cannot reach {urls}: {reason}")]
    Unreachable {
        /// The URLs tried.
        urls: String,
        /// The last transport error.
        reason: String,
    },
    /// The server answered something this client cannot read: a version mismatch or not a
    /// fluxplane server.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// Where from.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The caller gave something unusable, such as an empty URL list.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The server's error code, for [`ClientError::Api`] and `not_found` for
    /// [`ClientError::NotFound`].
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::NotFound { .. } => Some("not_found"),
            _ => None,
        }
    }

    /// Whether the server said that what was asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }

    /// Whether no server could be reached (as opposed to a server saying no).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}
