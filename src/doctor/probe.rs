//! doctor's own corner of the share: `<share_root>/.sharelink/doctor.<host>.<pid>/`,
//! made fresh, used for every probe, and removed by the names doctor gave
//! its entries (never by listing what is there: the share is shared with
//! other tenants, and nothing but our own names is ours to remove).

use std::ffi::{OsStr, OsString};
use std::io;

use crate::config::RESERVED_DIR;
use crate::fs::dir::Dir;

/// The probe directory, open, with what is needed to remove it again.
pub(crate) struct ProbeArea {
    /// `<share_root>/.sharelink`.
    reserved: Dir,
    /// Whether doctor made `.sharelink` (then it removes it, if empty).
    made_reserved: bool,
    name: OsString,
    pub(crate) dir: Dir,
}

/// Where creating the probe area failed, for the message.
#[derive(Debug)]
pub(crate) struct AreaError {
    pub(crate) what: String,
    pub(crate) source: io::Error,
}

impl ProbeArea {
    /// Open (or make) `.sharelink` under `root` without following a
    /// symlink there, then make our own probe directory in it.
    #[inline(never)]
    pub(crate) fn create(root: &Dir) -> Result<ProbeArea, AreaError> {
        let fail = |what: String| move |source| AreaError { what, source };
        let reserved_name = OsStr::new(RESERVED_DIR);
        let made_reserved = match root.mkdir(reserved_name, 0o755) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(fail("create .sharelink".into())(e)),
        };
        let reserved = root
            .open_dir(reserved_name)
            .map_err(fail("open .sharelink (never through a symlink)".into()))?;
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().replace('/', "_"))
            .unwrap_or_default();
        let base = format!("doctor.{host}.{}", std::process::id());
        // A stale directory of an earlier doctor with our pid is not ours
        // to reuse or remove: take the next free name (`.1`, `.2`, `.3`).
        let mut n = 0;
        let name = loop {
            let name = match n {
                0 => OsString::from(&base),
                _ => OsString::from(format!("{base}.{n}")),
            };
            match reserved.mkdir(&name, 0o755) {
                Ok(()) => break name,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 3 => n += 1,
                Err(e) => {
                    if made_reserved {
                        let _ = root.rmdir(reserved_name);
                    }
                    return Err(fail(format!(".sharelink/{base}"))(e));
                }
            }
        };
        let dir = reserved
            .open_dir(&name)
            .map_err(fail(format!(".sharelink/{base}")))?;
        Ok(ProbeArea {
            reserved,
            made_reserved,
            name,
            dir,
        })
    }

    /// The path of the probe directory below `share_root`, for messages.
    pub(crate) fn rel_name(&self) -> String {
        format!("{RESERVED_DIR}/{}", self.name.to_string_lossy())
    }

    /// Remove the probe directory: `names` (files, symlinks, FIFOs) and
    /// `subdirs` (each holding at most `names`), then the directory itself,
    /// then `.sharelink` if doctor made it and it is empty. Returns what
    /// could not be removed.
    #[inline(never)]
    pub(crate) fn remove(self, root: &Dir, names: &[&str], subdirs: &[String]) -> Vec<String> {
        let mut left = Vec::new();
        let unlink = |d: &Dir, n: &str, left: &mut Vec<String>| match d.unlink(OsStr::new(n)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => left.push(format!("{n}: {e}")),
        };
        for sub in subdirs {
            if let Ok(d) = self.dir.open_dir(OsStr::new(sub)) {
                for n in names {
                    unlink(&d, n, &mut left);
                }
            }
            match self.dir.rmdir(OsStr::new(sub)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => left.push(format!("{sub}: {e}")),
            }
        }
        for n in names {
            unlink(&self.dir, n, &mut left);
        }
        if let Err(e) = self.reserved.rmdir(&self.name) {
            left.push(format!("{}: {e}", self.rel_name()));
        }
        if self.made_reserved {
            // Another sharelink may have put its lock there meanwhile: then
            // it stays (ENOTEMPTY), as it should.
            let _ = root.rmdir(OsStr::new(RESERVED_DIR));
        }
        left
    }
}

/// Free bytes for an unprivileged writer; `None` where the filesystem
/// reports no size at all (some FUSE and network filesystems).
pub(crate) fn free_bytes(root: &Dir) -> Option<u64> {
    let s = nix::sys::statvfs::fstatvfs(root).ok()?;
    (s.blocks() > 0).then(|| s.blocks_available() as u64 * s.fragment_size() as u64)
}
