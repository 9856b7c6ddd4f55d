//! What sharelink exits with. Its own codes are BSD `sysexits.h` values
//! where one fits; after `run` it exits with the command's status.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok,
    /// `status`: some link is not healthy.
    Unhealthy,
    /// Bad command line.
    Usage,
    /// The filesystem holds something sharelink must not touch.
    Unsafe,
    /// `share_root` missing or not mounted.
    ShareUnavailable,
    /// Permission denied, read-only, or no space left.
    CannotWrite,
    /// Any other I/O failure.
    Io,
    /// Config missing or invalid.
    Config,
    /// The command exists but cannot be run (or privileges could not be
    /// dropped for it).
    NotExecutable,
    /// The command does not exist.
    NotFound,
    /// The command exited with this status.
    Command(u8),
    /// Killed by this signal (the command, or sharelink while linking):
    /// 128 + the signal, as a shell reports it.
    Signal(i32),
}

impl ExitCode {
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::Unhealthy => 1,
            ExitCode::Usage => 2,
            ExitCode::Unsafe => 65,
            ExitCode::ShareUnavailable => 69,
            ExitCode::CannotWrite => 73,
            ExitCode::Io => 74,
            ExitCode::Config => 78,
            ExitCode::NotExecutable => 126,
            ExitCode::NotFound => 127,
            ExitCode::Command(status) => status as i32,
            ExitCode::Signal(sig) => 128 + sig,
        }
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode::*;

    #[test]
    fn documented_values() {
        let all = [
            (Ok, 0),
            (Unhealthy, 1),
            (Usage, 2),
            (Unsafe, 65),
            (ShareUnavailable, 69),
            (CannotWrite, 73),
            (Io, 74),
            (Config, 78),
            (NotExecutable, 126),
            (NotFound, 127),
            (Command(3), 3),
            (Signal(libc::SIGTERM), 143),
        ];
        for (c, n) in all {
            assert_eq!(c.code(), n, "{c:?}");
        }
    }
}
