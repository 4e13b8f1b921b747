//! The one place where failures become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldError;

/// A field of a request that is wrong, with its full path
/// (`records[1].period`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            description: description.into(),
        }
    }

    /// Turns domain field errors into violations under `prefix`
    /// (`records[1]`, `selector`); an empty prefix leaves the names alone.
    pub fn under(prefix: &str, errors: Vec<FieldError>) -> Vec<Violation> {
        errors
            .into_iter()
            .map(|e| {
                let field = if prefix.is_empty() {
                    e.field
                } else {
                    format!("{prefix}.{}", e.field)
                };
                Violation {
                    field,
                    description: e.reason.0,
                }
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something wrong; nothing was stored.
    #[error("{}", summarize(.0))]
    InvalidArgument(Vec<Violation>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    OutOfRange(String),
    /// A position older than the event log retains.
    #[error(
        "events before sequence {oldest} are no longer retained (asked for {requested}); resume from {oldest}"
    )]
    EventsTrimmed { requested: u64, oldest: u64 },
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server is shutting down or cannot reach its store.
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// The store holds something it cannot read: a bug or corruption, never a
    /// caller's mistake.
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![Violation::new(field, description)])
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::OutOfRange(_) | Error::EventsTrimmed { .. } => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Storage(_) | Error::Corrupt(_) => Code::Internal,
        }
    }
}

fn summarize(violations: &[Violation]) -> String {
    let mut parts = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description));
    let first = parts.next().unwrap_or_else(|| "invalid request".to_owned());
    let rest: Vec<String> = parts.collect();
    if rest.is_empty() {
        first
    } else {
        format!("{first}; {}", rest.join("; "))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = error.code();
        if code == Code::Internal {
            tracing::error!(%error, "internal error");
        }
        match &error {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Status::with_error_details(code, error.to_string(), details)
            }
            Error::EventsTrimmed { oldest, .. } => {
                let metadata =
                    std::collections::HashMap::from([("oldest_sequence".to_owned(), oldest.to_string())]);
                let details = ErrorDetails::with_error_info("EVENTS_TRIMMED", "tradewatch", metadata);
                Status::with_error_details(code, error.to_string(), details)
            }
            _ => Status::new(code, error.to_string()),
        }
    }
}
