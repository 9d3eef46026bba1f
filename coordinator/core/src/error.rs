//! Why a command was refused, with a stable code for each kind (the HTTP layer maps codes to statuses).

/// A refused command. Refusals are deterministic: every coordinator refuses the same entry the same way,
/// and a refused entry changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Also what private repos look like to outsiders.
    #[error("Repository not found: {0}")]
    RepoNotFound(String),
    #[error("{what} `{name}` not found")]
    NotFound { what: &'static str, name: String },
    /// `url_path` names the existing repo (`spaces/ns/name`) so that clients can use it.
    #[error("{message}")]
    Conflict {
        message: String,
        url_path: Option<String>,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ApplyError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApplyError {
        ApplyError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The stable code sent as `X-Error-Code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApplyError::Unauthorized(_) => "Unauthorized",
            ApplyError::Forbidden(_) => "Forbidden",
            ApplyError::RepoNotFound(_) => "RepoNotFound",
            ApplyError::NotFound { .. } => "NotFound",
            ApplyError::Conflict { .. } => "Conflict",
            ApplyError::Invalid { .. } => "BadRequest",
        }
    }
}
