//! The one place where failures become gRPC statuses.

use std::path::Path;

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

#[derive(Debug, Clone, thiserror::Error)]
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
    /// More records in one batch than the server takes: RESOURCE_EXHAUSTED,
    /// with an `ErrorInfo` (reason `BATCH_TOO_LARGE`, metadata
    /// `max_batch_records`) that a client can split its batches by.
    #[error("{message}")]
    BatchTooLarge { max: usize, message: String },
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server is shutting down or cannot reach its store.
    #[error("{0}")]
    Unavailable(String),
    /// A wait the caller asked for (`min_log_position`) ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// sled failed: INTERNAL, but for an I/O error, which a read may meet
    /// once a write has failed (see [`Error::write_failed`]): the code of a
    /// full or read-only disk, else UNAVAILABLE.
    #[error("{}", storage_message(.0))]
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
            Error::ResourceExhausted(_) | Error::BatchTooLarge { .. } => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Storage(e) => match e {
                sled::Error::Io(io) => DiskFault::of(io).map_or(Code::Unavailable, DiskFault::code),
                _ => Code::Internal,
            },
            Error::Corrupt(_) => Code::Internal,
        }
    }

    /// The answer to a write the store could not make durable, and to every
    /// write after it: once a write to the log has failed, sled refuses all
    /// writes until the store is opened again. A full disk (or quota) is
    /// `RESOURCE_EXHAUSTED`, a read-only one `FAILED_PRECONDITION`, another
    /// I/O failure `UNAVAILABLE`; each message names the data dir.
    pub fn write_failed(dir: &Path, error: &sled::Error) -> Error {
        const OUTCOME: &str = "this write may not have been stored (writes acknowledged before it are safe)";
        let sled::Error::Io(io) = error else {
            return Error::Unavailable(format!("write could not be made durable: {error}"));
        };
        match DiskFault::of(io) {
            Some(fault) => fault.error(format!(
                "{}: {OUTCOME}; writes are refused until {} and tradewatch is restarted",
                fault.describe(dir),
                fault.remedy()
            )),
            None => Error::Unavailable(format!(
                "cannot write to data dir {} ({}): {OUTCOME}; writes are refused until tradewatch is restarted",
                dir.display(),
                describe_io(io)
            )),
        }
    }

    /// A write refused before anything of it was stored, because probing
    /// the data dir's file system failed with `io` (it has turned
    /// read-only); `None` when `io` is not such a fault.
    pub fn disk_refused(dir: &Path, io: &std::io::Error) -> Option<Error> {
        let fault = DiskFault::of(io)?;
        Some(fault.error(format!(
            "{}: nothing was stored; writes resume once {}",
            fault.describe(dir),
            fault.remedy()
        )))
    }

    /// A write refused before anything of it was stored, because only
    /// `free` bytes are left on the data dir's disk: less than the
    /// `keep_free` the store keeps so that sled never runs out in the middle
    /// of a write, plus the `needed` it estimates for this one.
    pub fn disk_low(dir: &Path, free: u64, keep_free: u64, needed: u64) -> Error {
        const MIB: f64 = 1024.0 * 1024.0;
        let (dir, free_mib, keep_mib) = (dir.display(), free as f64 / MIB, keep_free as f64 / MIB);
        let state = if free < keep_free {
            format!(
                "the disk of data dir {dir} is full ({free_mib:.1} MiB free; tradewatch keeps {keep_mib:.0} MiB free)"
            )
        } else {
            format!(
                "the disk of data dir {dir} is too full for this write ({free_mib:.1} MiB free; \
                 it needs about {:.1} MiB besides the {keep_mib:.0} MiB tradewatch keeps free)",
                needed as f64 / MIB
            )
        };
        Error::ResourceExhausted(format!(
            "{state}: nothing was stored; writes resume once space is freed"
        ))
    }

    /// Why the store in `dir` cannot be opened.
    pub fn open_failed(dir: &Path, error: sled::Error) -> Error {
        let sled::Error::Io(io) = error else {
            return Error::Storage(error);
        };
        match DiskFault::of(&io) {
            Some(fault) => fault.error(format!(
                "cannot open the store: {}; tradewatch needs to write there",
                fault.describe(dir)
            )),
            None if lock_held(&io) => Error::FailedPrecondition(format!(
                "cannot open store in {} (is another tradewatch using it?): {io}",
                dir.display()
            )),
            None => Error::FailedPrecondition(format!("cannot open store in {}: {io}", dir.display())),
        }
    }
}

/// A state of the data dir's disk that refuses writes until an operator
/// acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskFault {
    Full,
    Quota,
    ReadOnly,
}

impl DiskFault {
    fn of_sled(error: &sled::Error) -> Option<DiskFault> {
        match error {
            sled::Error::Io(io) => DiskFault::of(io),
            _ => None,
        }
    }

    /// By kind, not raw OS code: sled hands the error that stopped its log
    /// to later callers as a copy that keeps only the kind.
    fn of(io: &std::io::Error) -> Option<DiskFault> {
        match io.kind() {
            std::io::ErrorKind::StorageFull => Some(DiskFault::Full),
            std::io::ErrorKind::QuotaExceeded => Some(DiskFault::Quota),
            std::io::ErrorKind::ReadOnlyFilesystem => Some(DiskFault::ReadOnly),
            _ => None,
        }
    }

    fn describe(self, dir: &Path) -> String {
        let dir = dir.display();
        match self {
            DiskFault::Full => format!("the disk of data dir {dir} is full (no space left on device)"),
            DiskFault::Quota => format!("data dir {dir} is over its disk quota"),
            DiskFault::ReadOnly => format!("data dir {dir} is on a read-only file system"),
        }
    }

    fn state(self) -> &'static str {
        match self {
            DiskFault::Full => "is full (no space left on device)",
            DiskFault::Quota => "is over its quota",
            DiskFault::ReadOnly => "is read-only",
        }
    }

    fn remedy(self) -> &'static str {
        match self {
            DiskFault::Full | DiskFault::Quota => "space is freed",
            DiskFault::ReadOnly => "the data dir is writable again",
        }
    }

    /// A disk out of space is an exhausted resource; a read-only one needs
    /// an operator before anything can be written (no use retrying).
    fn code(self) -> Code {
        match self {
            DiskFault::Full | DiskFault::Quota => Code::ResourceExhausted,
            DiskFault::ReadOnly => Code::FailedPrecondition,
        }
    }

    fn error(self, message: String) -> Error {
        match self {
            DiskFault::Full | DiskFault::Quota => Error::ResourceExhausted(message),
            DiskFault::ReadOnly => Error::FailedPrecondition(message),
        }
    }
}

/// An I/O error as people read it. sled hands the error that stopped its
/// log on as a copy holding the original's debug form
/// (`Os { code: 5, kind: …, message: "Input/output error" }`, escaped once
/// more in a copy of a copy), which is put back into the usual form.
fn describe_io(io: &std::io::Error) -> String {
    let text = io.to_string();
    if io.raw_os_error().is_none()
        && let Some((_, rest)) = text.split_once("Os { code: ")
        && let Some((code, rest)) = rest.split_once(',')
        && let Some((_, rest)) = rest.split_once("message: ")
    {
        let message = rest.trim_start_matches(['\\', '"']);
        let message = message.split(['\\', '"']).next().unwrap_or(message);
        return format!("{message} (os error {code})");
    }
    text
}

fn storage_message(error: &sled::Error) -> String {
    match DiskFault::of_sled(error) {
        Some(fault) => format!(
            "storage: the store's disk {}: it refuses writes, and reads that would have to write, \
             until {} and tradewatch is restarted",
            fault.state(),
            fault.remedy()
        ),
        None => match error {
            sled::Error::Io(io) => format!("storage: {}", describe_io(io)),
            other => format!("storage: {other}"),
        },
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

/// A status travels in HTTP/2 trailers, which a client accepts only up to a
/// size (16 KiB in hyper/h2-based clients such as tonic's); beyond it the
/// client sees INTERNAL "h2 protocol error" instead of the status. The
/// message also travels a second time inside `grpc-status-details-bin`,
/// base64-encoded. So caller text echoed in descriptions is cut short, and
/// a long list of violations is cut, the message saying how many were left
/// out: message ≤ 2 KiB percent-encoded, violations ≤ 4 KiB, about 10 KiB
/// of trailers in all.
const MAX_MESSAGE_ENCODED: usize = 2048;
const MAX_VIOLATIONS_BYTES: usize = 4096;
const MAX_DESCRIPTION_BYTES: usize = 300;

/// `s` cut (at a char boundary) so that its percent-encoding as
/// `grpc-message` fits `max`, marked with an ellipsis when cut. tonic
/// encodes bytes outside printable ASCII and ` "#%<>`?{}` as three bytes.
fn cut(s: &str, max: usize) -> String {
    cut_by(s, max, |c| {
        if c.is_ascii_graphic() && !"\"#%<>`?{}".contains(c) {
            1
        } else {
            3 * c.len_utf8()
        }
    })
}

/// `s` cut (at a char boundary) to at most `max` bytes of UTF-8.
fn cut_bytes(s: &str, max: usize) -> String {
    cut_by(s, max, char::len_utf8)
}

fn cut_by(s: &str, max: usize, size_of: impl Fn(char) -> usize) -> String {
    if s.chars().map(&size_of).sum::<usize>() <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut size = size_of('…');
    for c in s.chars() {
        size += size_of(c);
        if size > max {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// The violations that fit a status (descriptions cut short, the list cut
/// at [`MAX_VIOLATIONS_BYTES`]), and a message naming them and how many
/// were left out.
fn bounded(violations: &[Violation]) -> (Vec<Violation>, String) {
    let mut listed = Vec::new();
    let mut size = 0;
    for v in violations {
        let v = Violation::new(
            cut_bytes(&v.field, 200),
            cut_bytes(&v.description, MAX_DESCRIPTION_BYTES),
        );
        size += v.field.len() + v.description.len() + 8;
        if size > MAX_VIOLATIONS_BYTES && !listed.is_empty() {
            break;
        }
        listed.push(v);
    }
    let mut message = summarize(&listed);
    if listed.len() < violations.len() {
        message = format!(
            "{}; … and {} more violation(s)",
            cut(&message, MAX_MESSAGE_ENCODED - 64),
            violations.len() - listed.len()
        );
    }
    (listed, cut(&message, MAX_MESSAGE_ENCODED))
}

impl Error {
    /// The message, as bounded as a status's (see [`bounded`]): for text
    /// that goes back to a caller elsewhere, such as an IngestRecords
    /// rejection, where an unbounded list of violations could make the
    /// response too large for the client to accept.
    pub fn bounded_message(&self) -> String {
        match self {
            Error::InvalidArgument(violations) => bounded(violations).1,
            other => cut(&other.to_string(), MAX_MESSAGE_ENCODED),
        }
    }
}

/// The `ErrorInfo` reason of [`Error::BatchTooLarge`], and its metadata key
/// for the server's limit.
pub const BATCH_TOO_LARGE: &str = "BATCH_TOO_LARGE";
pub const MAX_BATCH_RECORDS: &str = "max_batch_records";

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = error.code();
        if code == Code::Internal {
            tracing::error!(%error, "internal error");
        } else if let Error::Storage(e) = &error {
            tracing::warn!(error = %e, "storage error");
        }
        match &error {
            Error::InvalidArgument(violations) => {
                let (listed, message) = bounded(violations);
                let mut details = ErrorDetails::new();
                for v in listed {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(code, message, details)
            }
            Error::EventsTrimmed { oldest, .. } => {
                let metadata =
                    std::collections::HashMap::from([("oldest_sequence".to_owned(), oldest.to_string())]);
                let details = ErrorDetails::with_error_info("EVENTS_TRIMMED", "tradewatch", metadata);
                Status::with_error_details(code, error.to_string(), details)
            }
            Error::BatchTooLarge { max, .. } => {
                let metadata =
                    std::collections::HashMap::from([(MAX_BATCH_RECORDS.to_owned(), max.to_string())]);
                let details = ErrorDetails::with_error_info(BATCH_TOO_LARGE, "tradewatch", metadata);
                Status::with_error_details(code, cut(&error.to_string(), MAX_MESSAGE_ENCODED), details)
            }
            _ => Status::new(code, cut(&error.to_string(), MAX_MESSAGE_ENCODED)),
        }
    }
}

/// Whether opening a store failed because another store (another process,
/// or one of this process not yet let go of) holds its directory's lock.
/// sled reports that as an `Other` I/O error known only by its message.
pub fn lock_held(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().starts_with("could not acquire lock")
}
