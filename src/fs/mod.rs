//! Filesystem primitives. Data trees are walked relative to open
//! directories ([`dir::Dir`]) and never through symlinks; copies keep what
//! `cp -a` keeps ([`content`], [`attrs`]); work on many entries runs on a
//! small pool ([`pool`]), and written files close off the writers'
//! threads ([`closer`]).

pub(crate) mod attrs;
pub(crate) mod closer;
pub(crate) mod content;
pub(crate) mod dir;
pub(crate) mod meta;
pub(crate) mod names;
pub(crate) mod pool;
pub(crate) mod share;
pub(crate) mod tree;

use std::io;

/// The entry went away or became something else while we looked: nothing
/// there, a component no longer a directory, or a symlink where a directory
/// was (never followed).
pub(crate) fn gone(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}
