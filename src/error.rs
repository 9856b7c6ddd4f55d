//! Errors. Every failure that reaches the user is an [`Error`]: a message
//! that names the culprit (a config key, a path) and a class that fixes the
//! [`ExitCode`]. I/O errors are classed by errno so that "the share is
//! full" (73) is told apart from "the share is flaky" (74).

use std::fmt;
use std::io;
use std::path::Path;

pub use crate::exit_code::ExitCode;
use crate::signals::signal_name;

#[derive(Debug)]
pub enum Error {
    /// Config missing or invalid (78).
    Config(String),
    /// Something is where sharelink must not touch it (65).
    Unsafe(String),
    /// The share is not there (69).
    ShareUnavailable(String),
    /// An I/O failure; the class comes from the errno (73 or 74).
    Io { context: String, source: io::Error },
    /// A termination signal arrived during linking: stop, exit 128+signal.
    Interrupted(i32),
    /// The link's lock was taken over (this run stalled past its lease) or
    /// could not be confirmed: stop before touching anything else (74).
    LockLost(String),
    /// The share target kept changing under sharelink (74).
    ShareKeepsChanging(String),
    /// The app directory kept changing during a migration; what is left
    /// stays in place (74).
    AppBusy(String),
    /// The app directory sits on a read-only filesystem (73).
    ReadOnlyApp(String),
    /// The app directory cannot be emptied by this user (73).
    CannotEmpty(String),
    /// Already logged where it happened (each failing link says why);
    /// only the exit code is left to give.
    Reported(ExitCode),
    /// The share has no room for the copy (73).
    NoSpace(String),
    /// The share refuses sharelink's writes: permissions or read-only (73).
    ShareNotWritable(String),
    /// Bad command line (2).
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Config,
            Error::Unsafe(_) => ExitCode::Unsafe,
            Error::ShareUnavailable(_) => ExitCode::ShareUnavailable,
            Error::Io { source, .. } => io_exit_code(source),
            Error::Interrupted(sig) => ExitCode::Signal(*sig),
            Error::Usage(_) => ExitCode::Usage,
            Error::LockLost(_) | Error::ShareKeepsChanging(_) | Error::AppBusy(_) => ExitCode::Io,
            Error::ReadOnlyApp(_)
            | Error::CannotEmpty(_)
            | Error::NoSpace(_)
            | Error::ShareNotWritable(_) => ExitCode::CannotWrite,
            Error::Reported(code) => *code,
        }
    }

    /// An I/O error with what was being done and to which path.
    pub(crate) fn io(what: &str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }

    pub(crate) fn is_interrupted(&self) -> bool {
        matches!(self, Error::Interrupted(_))
    }
}

/// 73 for "cannot write here" errors, 74 for everything else.
pub(crate) fn io_exit_code(e: &io::Error) -> ExitCode {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ENOSPC | libc::EDQUOT) => {
            ExitCode::CannotWrite
        }
        _ => ExitCode::Io,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m)
            | Error::Unsafe(m)
            | Error::ShareUnavailable(m)
            | Error::Usage(m)
            | Error::LockLost(m)
            | Error::ShareKeepsChanging(m)
            | Error::AppBusy(m)
            | Error::ReadOnlyApp(m)
            | Error::CannotEmpty(m)
            | Error::NoSpace(m)
            | Error::ShareNotWritable(m) => f.write_str(m),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Interrupted(sig) => write!(f, "interrupted by signal {}", signal_name(*sig)),
            Error::Reported(code) => write!(f, "failed (exit {code}), as logged above"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Attach a path and a verb to an `io::Result`.
pub(crate) trait IoContext<T>: Sized {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.with_ctx(what, || path)
    }

    /// As [`IoContext::ctx`], the path built only on failure (a hot path
    /// that would otherwise allocate it for every success).
    fn with_ctx<P: AsRef<Path>>(self, what: &str, path: impl FnOnce() -> P) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn with_ctx<P: AsRef<Path>>(self, what: &str, path: impl FnOnce() -> P) -> Result<T> {
        self.map_err(|e| Error::io(what, path().as_ref(), e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn with_ctx<P: AsRef<Path>>(self, what: &str, path: impl FnOnce() -> P) -> Result<T> {
        self.map_err(|e| Error::io(what, path().as_ref(), io::Error::from(e)))
    }
}
