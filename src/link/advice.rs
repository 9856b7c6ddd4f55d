//! Share-side failures worded like the app-side ones: who (uid, gid), what
//! (the share directory, its owner and mode, the mount), and the fix (the
//! mount's options, a chown, `run --user`). Also the wording for what `fs`
//! reports as facts: a symlink or a file where a directory belongs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Config;
use crate::error::Error;
use crate::fs::tree::MakeError;

/// A symlink found on the way to a share path, refused.
pub(crate) fn unsafe_symlink(at: &Path) -> Error {
    Error::Unsafe(format!(
        "{} is a symlink inside the share; sharelink never follows those (it could write outside the share). Replace it with a directory",
        at.display()
    ))
}

/// A directory that could not be made, with what to do about it.
impl From<MakeError> for Error {
    fn from(e: MakeError) -> Error {
        match e {
            MakeError::Symlink(at) => unsafe_symlink(&at),
            MakeError::NotDir(at, kind) => Error::Unsafe(format!(
                "{} is a {kind} where a directory belongs; move it away and re-run",
                at.display()
            )),
            MakeError::Io(e) => e,
        }
    }
}

/// A directory on the app side that could not be made again (to put back
/// what a writer wrote): the symlink or file in the way is named as the
/// app's, not the share's.
pub(crate) fn app_side(e: MakeError) -> Error {
    match e {
        MakeError::Symlink(at) => Error::Unsafe(format!(
            "{} is a symlink where a directory of the app's data belongs; sharelink never follows those. Replace it with a directory and re-run",
            at.display()
        )),
        MakeError::NotDir(at, kind) => Error::Unsafe(format!(
            "{} is a {kind} where a directory of the app's data belongs; move it away and re-run",
            at.display()
        )),
        MakeError::Io(e) => e,
    }
}

/// `e` with the share's side explained when it is "cannot write" (EACCES,
/// EPERM, EROFS) on a path in the share; otherwise `e` as it is.
pub(crate) fn explain(cfg: &Config, e: Error) -> Error {
    let Error::Io { context, source } = &e else {
        return e;
    };
    let share = cfg.share_root.to_string_lossy();
    let errno = source.raw_os_error();
    if !context.contains(share.as_ref())
        || !matches!(errno, Some(libc::EACCES | libc::EPERM | libc::EROFS))
    {
        return e;
    }
    Error::ShareNotWritable(share_not_writable(
        &cfg.share_root,
        &format!("{context}: {source}"),
        errno == Some(libc::EROFS),
    ))
}

/// The message for a write the share refused.
fn share_not_writable(share_root: &Path, what: &str, read_only: bool) -> String {
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let owner = match std::fs::metadata(share_root) {
        Ok(m) => format!(
            "{} is owned by uid {}, gid {}, mode {:04o}",
            share_root.display(),
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ),
        Err(e) => format!("{}: {e}", share_root.display()),
    };
    let mount = super::mounts::mount_description(share_root)
        .map(|m| format!(", on {m}"))
        .unwrap_or_default();
    let fix = if read_only {
        "The share is mounted read-only: mount it read-write (drop `ro` from the mount's \
         options, `:ro` from `-v`, or `readOnly: true` from the volumeMount)"
            .to_string()
    } else {
        format!(
            "Give uid {uid} write access to the share: for SMB/Azure Files mount it with \
             uid={uid},gid={gid} (or dir_mode=0777,file_mode=0777) in the volume's or \
             StorageClass's mount options; for a bind mount or NFS, chown {uid}:{gid} the \
             directory on its host; or start sharelink as root and let it drop to the \
             pipeline's user with `run --user`"
        )
    };
    format!(
        "sharelink (uid {uid}, gid {gid}) cannot write to the share: {what}. {owner}{mount}. {fix}"
    )
}
