//! The one error type of the PJRT layer; every `PJRT_Error*` is turned into `Error::Pjrt`
//! (call, code, message) and destroyed in `Api::check`.
use std::fmt;
use std::path::PathBuf;

/// A PJRT status code (`PJRT_Error_Code`, the same numbering as absl::StatusCode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        NAMES.get(self.0 as usize).copied().unwrap_or("UNRECOGNISED_CODE")
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load PJRT plugin {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path} is not a PJRT plugin: it does not export GetPjrtApi ({message})")]
    NotAPlugin { path: PathBuf, message: String },
    #[error(
        "PJRT plugin {path} implements PJRT C API {major}.{minor}, but gemma-xla supports \
         {supported_major}.{min_minor} up to {supported_major}.{max_minor} (and later minors)"
    )]
    UnsupportedVersion { path: PathBuf, major: i32, minor: i32, supported_major: i32, min_minor: i32, max_minor: i32 },
    #[error("{call} is not provided by this PJRT plugin (its C API is {major}.{minor})")]
    Unsupported { call: &'static str, major: i32, minor: i32 },
    #[error("{call} failed with {code}: {message}")]
    Pjrt { call: &'static str, code: ErrorCode, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
