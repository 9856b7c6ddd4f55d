//! PID 1: run the command, forward signals, reap zombies. (placeholder: being written)
use std::ffi::OsString;
use std::time::Duration;

use crate::user::Credentials;

/// What `sharelink run` starts and how it supervises it.
#[derive(Debug)]
pub struct RunOptions {
    pub command: Vec<OsString>,
    pub credentials: Option<Credentials>,
    pub grace_period: Duration,
    pub kill_process_group: bool,
}

/// Start the command and act as its init; returns sharelink's exit code.
pub fn run(_opts: RunOptions) -> i32 {
    unimplemented!("supervisor")
}
