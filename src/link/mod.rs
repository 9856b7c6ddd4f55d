//! The linking half: make every data directory a symlink into the share,
//! moving baked data in first.
//!
//! [`plan`] observes and decides (pure), [`status`] reports the plan,
//! [`apply`] carries it out, [`migrate`] moves data crash-safely under a
//! [`lock`], [`mounts`] guards against a share that is not mounted and
//! against volumes inside data directories.

pub(crate) mod advice;
pub(crate) mod apply;
pub(crate) mod lock;
pub(crate) mod migrate;
pub(crate) mod mounts;
pub(crate) mod plan;
pub(crate) mod status;
pub(crate) mod target;

use crate::config::Config;
use crate::error::Result;

pub(crate) use apply::Owner;

/// "1 file", "2 files": a count and its noun, for log lines.
pub(crate) fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The mount guard, then plan and apply every link.
pub(crate) fn link_all(cfg: &Config, owner: Option<Owner>) -> Result<()> {
    mounts::check_share(cfg, true)?;
    let _files = OpenFiles::raise();
    apply::apply(cfg, owner)
}

/// The soft limit on open files raised to the hard one while linking, and
/// put back after, so the command starts with the limit it was given.
/// A migration holds two directories open per level of a deep tree, and
/// container runtimes may set a soft limit of 1024.
struct OpenFiles(Option<libc::rlimit>);

impl OpenFiles {
    fn raise() -> OpenFiles {
        let mut was = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on a local struct.
        let raised = unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut was) == 0
                && was.rlim_cur < was.rlim_max
                && libc::setrlimit(
                    libc::RLIMIT_NOFILE,
                    &libc::rlimit {
                        rlim_cur: was.rlim_max,
                        rlim_max: was.rlim_max,
                    },
                ) == 0
        };
        OpenFiles(raised.then_some(was))
    }
}

impl Drop for OpenFiles {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            // SAFETY: as above; lowering the soft limit cannot fail.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, was) };
        }
    }
}
