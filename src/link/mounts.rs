//! The mount guard: with `require_mount = true`, `share_root` must be a mount
//! point (from `/proc/self/mountinfo`) before anything is touched, because
//! writing into an unmounted path puts data in the container layer, where it
//! vanishes with the container.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::signals;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points listed in mountinfo (field 5, octal escapes decoded). The
/// text is bytes: a mount point's name need not be UTF-8.
pub fn mount_points(mountinfo: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|l| l.split(|&b| b == b' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape(b: &[u8]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// A mount point at or below `dir` (a volume over or inside a data
/// directory), if there is one. Only read for directories about to be
/// migrated, never on the linked fast path. An unreadable mount table is
/// an error, not "no mounts": guessing wrong would empty a volume.
pub fn mount_at_or_below(dir: &Path) -> Result<Option<PathBuf>> {
    let fail = |what: &str, e: std::io::Error| Error::Io {
        context: format!(
            "cannot {what} to check for volumes mounted inside {}; refusing to migrate it",
            dir.display()
        ),
        source: e,
    };
    let real = std::fs::canonicalize(dir).map_err(|e| fail("resolve the data directory", e))?;
    let text = std::fs::read(MOUNTINFO).map_err(|e| fail(&format!("read {MOUNTINFO}"), e))?;
    let found = mount_points(&text).find(|m| m.starts_with(&real));
    Ok(found.map(|m| match m.strip_prefix(&real) {
        Ok(rel) if !rel.as_os_str().is_empty() => dir.join(rel),
        _ => dir.to_path_buf(),
    }))
}

/// Where `path` lives: the filesystem (mountinfo's `major:minor`) and its
/// path inside that filesystem (the mount's root joined with the rest), so
/// that two paths reached through different bind mounts can be compared.
/// `real` must be free of symlinks and of `.` and `..`.
/// `None` when the mount table cannot say: the mount it names is not the
/// one the path is on (hidden by a later mount over a parent). One read of
/// the mount table for all of `reals`.
pub fn fs_paths<const N: usize>(reals: [&Path; N]) -> Result<[Option<FsPath>; N]> {
    let text = std::fs::read(MOUNTINFO).map_err(|e| Error::io("read", Path::new(MOUNTINFO), e))?;
    Ok(reals.map(|real| checked_fs_path(&text, real)))
}

fn checked_fs_path(text: &[u8], real: &Path) -> Option<FsPath> {
    use std::os::unix::fs::MetadataExt;
    let found = fs_path_in(text, real)?;
    let st_dev = real
        .ancestors()
        .find_map(|p| std::fs::symlink_metadata(p).ok())?
        .dev();
    let named = std::str::from_utf8(&found.dev)
        .ok()
        .and_then(|d| d.split_once(':'))
        .and_then(|(a, b)| Some(libc::makedev(a.parse().ok()?, b.parse().ok()?)));
    (named == Some(st_dev)).then_some(found)
}

/// Where a path lives: its filesystem (mountinfo's `major:minor`) and its
/// path inside that filesystem.
#[derive(Debug, PartialEq, Eq)]
pub struct FsPath {
    pub dev: Vec<u8>,
    pub path: PathBuf,
}

/// [`fs_path`] for a canonical path, against the text of a mountinfo.
fn fs_path_in(mountinfo: &[u8], real: &Path) -> Option<FsPath> {
    // The deepest mount point above `real`; of several at one point, the
    // last mounted (it hides the others).
    let mut best: Option<(usize, Vec<u8>, PathBuf, PathBuf)> = None;
    for line in mountinfo.split(|&b| b == b'\n') {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').take(5).collect();
        if f.len() < 5 {
            continue;
        }
        let at = PathBuf::from(unescape(f[4]));
        if !real.starts_with(&at) {
            continue;
        }
        let depth = at.components().count();
        if best.as_ref().is_none_or(|b| depth >= b.0) {
            best = Some((depth, f[2].to_vec(), PathBuf::from(unescape(f[3])), at));
        }
    }
    let (_, dev, root, at) = best?;
    let rest = real.strip_prefix(&at).ok()?;
    Some(FsPath {
        dev,
        path: root.join(rest),
    })
}

/// Why the share is not usable, or `None` when it is.
fn problem(share_root: &Path, require_mount: bool, mountinfo: &mut File) -> Option<String> {
    let real = match std::fs::canonicalize(share_root) {
        Ok(p) => p,
        Err(e) => {
            return Some(format!(
                "share_root {} is not there: {e}",
                share_root.display()
            ))
        }
    };
    if !real.is_dir() {
        return Some(format!(
            "share_root {} is not a directory",
            share_root.display()
        ));
    }
    if !require_mount {
        return None;
    }
    let mut text = Vec::new();
    use std::io::Seek;
    if mountinfo
        .rewind()
        .and_then(|_| mountinfo.read_to_end(&mut text))
        .is_err()
    {
        return Some(format!(
            "cannot read {MOUNTINFO} to check that share_root is mounted"
        ));
    }
    if mount_points(&text).any(|m| m == real) {
        None
    } else {
        Some(format!(
            "share_root {} is not a mount point (require_mount = true): the file share is not mounted. \
             Mount it, or set require_mount = false / --require-mount false for a plain directory",
            share_root.display()
        ))
    }
}

/// Check that the share is there (and mounted, if required). With `wait`,
/// keep looking for up to `mount_timeout`, waking when the mount table
/// changes (mountinfo polls POLLPRI on changes) or a signal asks us to stop.
pub fn check_share(cfg: &Config, wait: bool) -> Result<()> {
    let mut mountinfo = File::open(MOUNTINFO)
        .map_err(|e| Error::ShareUnavailable(format!("cannot open {MOUNTINFO}: {e}")))?;
    let deadline = Instant::now()
        + if wait {
            cfg.mount_timeout
        } else {
            Duration::ZERO
        };
    let mut logged = false;
    loop {
        let Some(why) = problem(&cfg.share_root, cfg.require_mount, &mut mountinfo) else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::ShareUnavailable(format!(
                "{why}; nothing was touched"
            )));
        }
        if !logged {
            crate::info!("waiting up to {:?} for the share: {why}", cfg.mount_timeout);
            logged = true;
        }
        let slice = (deadline - now).min(Duration::from_millis(200));
        let mut fds = [PollFd::new(mountinfo.as_fd(), PollFlags::POLLPRI)];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(slice).unwrap_or(PollTimeout::ZERO),
        );
        signals::check_interrupt()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_path_follows_bind_mounts_to_the_filesystem() {
        let mi = b"22 1 8:1 / / rw - ext4 /dev/vda rw\n\
40 22 8:1 /srv/app/data/store /mnt/share rw - ext4 /dev/vda rw\n\
41 22 0:50 / /mnt/other rw - tmpfs tmpfs rw\n\
42 41 0:51 / /mnt/other rw - tmpfs tmpfs rw\n";
        let p = |s: &str| {
            Some(FsPath {
                dev: b"8:1".to_vec(),
                path: PathBuf::from(s),
            })
        };
        assert_eq!(
            fs_path_in(mi, Path::new("/srv/app/data")),
            p("/srv/app/data")
        );
        assert_eq!(
            fs_path_in(mi, Path::new("/mnt/share/data")),
            p("/srv/app/data/store/data")
        );
        // Stacked at one point: the last one counts.
        assert_eq!(
            fs_path_in(mi, Path::new("/mnt/other/x")),
            Some(FsPath {
                dev: b"0:51".to_vec(),
                path: PathBuf::from("/x")
            })
        );
    }

    #[test]
    fn parses_mountinfo() {
        let text = b"22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                    90 22 0:50 / /mnt/file\\040share rw,relatime - cifs //a/b rw\n\
                    91 22 0:51 / /mnt/caf\xe9 rw - tmpfs t rw\n";
        let v: Vec<_> = mount_points(text).collect();
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            v,
            [
                PathBuf::from("/"),
                PathBuf::from("/mnt/file share"),
                PathBuf::from(std::ffi::OsStr::from_bytes(b"/mnt/caf\xe9"))
            ]
        );
    }

    #[test]
    fn unescapes_only_octal() {
        assert_eq!(unescape(b"a\\134b"), "a\\b");
        assert_eq!(unescape(b"a\\9"), "a\\9");
        assert_eq!(unescape(b"tail\\"), "tail\\");
    }
}
