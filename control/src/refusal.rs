//! Why the control plane says no: a [`Kind`] (which the HTTP layer turns into a status)
//! and one line for the user that says what to do. The rules modules speak only this;
//! they know nothing about HTTP.

use crate::store::StoreError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    /// It existed and was removed (a revoked node, a session on a removed node).
    Gone,
    /// It exists but cannot serve now (offline).
    Unavailable,
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: Kind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: Kind, message: impl Into<String>) -> Refusal {
        Refusal { kind, message: message.into() }
    }

    /// A failure of the control plane itself: logged, and told as such.
    pub fn internal(e: impl std::fmt::Display) -> Refusal {
        tracing::error!(error = %e, "internal error");
        Refusal::new(Kind::Internal, "the control plane failed; see its log")
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        match e {
            StoreError::Conflict(m) => Refusal::new(Kind::Conflict, m),
            StoreError::NotFound(m) => Refusal::new(Kind::NotFound, m),
            StoreError::Refused(m) => Refusal::new(Kind::Forbidden, m),
            StoreError::Sqlite(e) => {
                tracing::error!(error = %e, "database error");
                Refusal::new(Kind::Internal, "the control plane's database failed; see its log")
            }
            // Not a statement refused but the database out of reach (restarting, say): a
            // client may try again.
            StoreError::Pool(e) => {
                tracing::warn!(error = %e, "database unreachable");
                Refusal::new(Kind::Unavailable, "the control plane cannot reach its database; try again shortly")
            }
            StoreError::Postgres(e) if e.code().is_none() => {
                tracing::warn!(error = %e, "database connection failed");
                Refusal::new(Kind::Unavailable, "the control plane cannot reach its database; try again shortly")
            }
            StoreError::Postgres(e) => {
                tracing::error!(error = %e, "database error");
                Refusal::new(Kind::Internal, "the control plane's database failed; see its log")
            }
        }
    }
}

impl From<trust::TrustError> for Refusal {
    fn from(e: trust::TrustError) -> Refusal {
        Refusal::new(Kind::BadRequest, e.to_string())
    }
}

impl From<proto::Invalid> for Refusal {
    fn from(e: proto::Invalid) -> Refusal {
        Refusal::new(Kind::BadRequest, e.to_string())
    }
}

/// A user, node or session name, or why it is not one.
pub fn check_name(kind: &str, v: &str) -> Result<(), Refusal> {
    Ok(proto::check_name(kind, v)?)
}
