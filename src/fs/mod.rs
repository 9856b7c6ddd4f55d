//! Filesystem primitives. Data trees are walked relative to open
//! directories ([`dir::Dir`]) and never through symlinks; copies keep what
//! `cp -a` keeps ([`content`], [`attrs`]); work on many entries runs on a
//! small pool ([`pool`]).

pub mod attrs;
pub mod content;
pub mod dir;
pub mod meta;
pub mod names;
pub mod pool;
pub mod share;
pub mod tree;

use std::io;

/// The entry went away or became something else while we looked: nothing
/// there, a component no longer a directory, or a symlink where a directory
/// was (never followed).
pub fn gone(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}
