//! The mount guard: with `require_mount = true`, `share_root` must be a mount
//! point, or a directory on a mounted filesystem other than the container's
//! own (from `/proc/self/mountinfo`), before anything is touched, because
//! writing into an unmounted path puts data in the container layer, where it
//! vanishes with the container. A Docker volume on the local disk (an
//! image's `VOLUME` with no `-v`) is refused too unless allowed.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::signals;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points listed in mountinfo (field 5, octal escapes decoded). The
/// text is bytes: a mount point's name need not be UTF-8.
fn mount_points(mountinfo: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
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
pub(crate) fn mount_at_or_below(dir: &Path) -> Result<Option<PathBuf>> {
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
pub(crate) fn fs_paths<const N: usize>(reals: [&Path; N]) -> Result<[Option<FsPath>; N]> {
    let text = std::fs::read(MOUNTINFO).with_ctx("read", || Path::new(MOUNTINFO))?;
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
pub(crate) struct FsPath {
    pub(crate) dev: Vec<u8>,
    pub(crate) path: PathBuf,
}

/// Of the mountinfo lines `parse` takes (given their fields), the one of
/// the deepest mount point at or above `real`, with that mount point; of
/// several at one point, the last mounted (it hides the others).
fn deepest<T>(
    mountinfo: &[u8],
    real: &Path,
    parse: impl Fn(&[&[u8]]) -> Option<T>,
) -> Option<(PathBuf, T)> {
    let mut best: Option<(usize, PathBuf, T)> = None;
    for line in mountinfo.split(|&b| b == b'\n') {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if f.len() < 5 {
            continue;
        }
        let Some(t) = parse(&f) else {
            continue;
        };
        let at = PathBuf::from(unescape(f[4]));
        if !real.starts_with(&at) {
            continue;
        }
        let depth = at.components().count();
        if best.as_ref().is_none_or(|b| depth >= b.0) {
            best = Some((depth, at, t));
        }
    }
    best.map(|(_, at, t)| (at, t))
}

/// [`fs_paths`] for one canonical path, against the text of a mountinfo.
fn fs_path_in(mountinfo: &[u8], real: &Path) -> Option<FsPath> {
    let (at, (dev, root)) = deepest(mountinfo, real, |f| {
        Some((f[2].to_vec(), PathBuf::from(unescape(f[3]))))
    })?;
    let rest = real.strip_prefix(&at).ok()?;
    Some(FsPath {
        dev,
        path: root.join(rest),
    })
}

/// One line of mountinfo: the fields the mount guard reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    /// Where it is mounted.
    at: PathBuf,
    /// The directory of its filesystem that appears there (a bind mount's
    /// source path on the host's filesystem).
    root: PathBuf,
    fs_type: String,
    source: String,
}

/// The mount `real` is on: the deepest mount point at or above it; of
/// several at one point, the last mounted (it hides the others).
fn mount_of(mountinfo: &[u8], real: &Path) -> Option<MountEntry> {
    let (at, (root, fs_type, source)) = deepest(mountinfo, real, |f| {
        // The optional fields end at "-"; then type and source.
        let dash = f.iter().position(|x| *x == b"-")?;
        if dash < 5 || f.len() < dash + 3 {
            return None;
        }
        let text = |b: &[u8]| unescape(b).to_string_lossy().into_owned();
        Some((
            PathBuf::from(unescape(f[3])),
            text(f[dash + 1]),
            text(f[dash + 2]),
        ))
    })?;
    Some(MountEntry {
        at,
        root,
        fs_type,
        source,
    })
}

/// "the cifs filesystem mounted at /mnt/fileshare (//acct/share)": where
/// `path` is, for messages; `None` when the mount table cannot say.
pub(crate) fn mount_description(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let text = std::fs::read(MOUNTINFO).ok()?;
    let m = mount_of(&text, &real)?;
    Some(format!(
        "the {} filesystem mounted at {} ({})",
        m.fs_type,
        m.at.display(),
        m.source
    ))
}

/// Filesystems that live and die with the container or the machine: a
/// `share_root` below one of them is not on a share.
const LOCAL_ONLY: [&str; 11] = [
    "overlay",
    "fuse-overlayfs",
    "fuse.fuse-overlayfs",
    "aufs",
    "tmpfs",
    "ramfs",
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "mqueue",
];

/// A volume Docker (or Podman) keeps on the local disk: the mount's root is
/// `…/volumes/<name>/_data`. `Some(name)`, 64 hex digits for an anonymous
/// volume (an image's `VOLUME` with no `-v`).
fn docker_volume(m: &MountEntry) -> Option<String> {
    let parts: Vec<_> = m.root.iter().map(|c| c.to_string_lossy()).collect();
    parts
        .windows(3)
        .find(|w| w[0] == "volumes" && w[2] == "_data")
        .map(|w| w[1].to_string())
}

fn is_anonymous_volume(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How to give the container its share, for every message that says it
/// has none.
fn how_to_mount(at: &Path) -> String {
    let at = at.display();
    format!(
        "Mount the file share at {at} (or at a directory above it): `docker run -v SHARE:{at}`, \
         a `volumes:` entry `- SHARE:{at}` in docker-compose, or a volumeMount with \
         mountPath {at} in Kubernetes (`kubectl describe pod` shows why a configured one \
         failed). require_mount = false is only for a plain directory on purpose"
    )
}

/// The share's mount is fine: `None`, or a note to log (`share_root` below
/// the mount point). `Err` says why it is not usable.
fn mounted(
    real: &Path,
    share_root: &Path,
    allow_local_volume: bool,
    text: &[u8],
) -> Result<Option<String>, String> {
    let Some(m) = mount_of(text, real) else {
        return Err(format!(
            "{MOUNTINFO} lists no mount for share_root {}",
            share_root.display()
        ));
    };
    if let Some(name) = docker_volume(&m).filter(|_| !allow_local_volume) {
        let what = if is_anonymous_volume(&name) {
            "an anonymous Docker volume on this machine's disk, which Docker creates for an \
             image's `VOLUME` when no volume or bind mount is given there"
                .to_string()
        } else {
            format!("the Docker volume {name:?} on this machine's disk")
        };
        return Err(format!(
            "share_root {} is on {what} ({} mounted at {}), not on the file share: \
             data written there stays on this host. {}. If a local volume is what you \
             want, set allow_local_volume = true",
            share_root.display(),
            m.root.display(),
            m.at.display(),
            how_to_mount(&m.at)
        ));
    }
    if m.at == real {
        return Ok(None);
    }
    if m.at == Path::new("/") || LOCAL_ONLY.contains(&m.fs_type.as_str()) {
        let on = if m.at == Path::new("/") {
            "the container's own root filesystem".to_string()
        } else {
            format!(
                "{} ({}), which is local to the container",
                m.at.display(),
                m.fs_type
            )
        };
        return Err(format!(
            "share_root {} is not mounted: it is not a mount point, and it lies on {on}, \
             so data written there would vanish with the container (require_mount = true). {}",
            share_root.display(),
            how_to_mount(share_root)
        ));
    }
    Ok(Some(format!(
        "share_root {} is not a mount point itself; it is on the {} filesystem mounted at {} \
         ({}), not the container's root filesystem: using it",
        share_root.display(),
        m.fs_type,
        m.at.display(),
        m.source
    )))
}

/// What the guard found usable.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// `share_root` is on the share; maybe a note on where.
    Ready(Option<String>),
    /// `share_root` does not exist yet, but the directory it would be in
    /// is on the share (one share for several apps: `etl-prod` is new).
    Missing(String),
}

/// Why the share is not usable (`Err`), or what was found.
fn problem(
    share_root: &Path,
    require_mount: bool,
    allow_local_volume: bool,
    mountinfo: &mut File,
) -> Result<Found, String> {
    let mut text = Vec::new();
    let mut read_table = || {
        use std::io::Seek;
        text.clear();
        mountinfo
            .rewind()
            .and_then(|_| mountinfo.read_to_end(&mut text))
            .map(|_| text.clone())
            .map_err(|_| format!("cannot read {MOUNTINFO} to check that share_root is mounted"))
    };
    let real = match std::fs::canonicalize(share_root) {
        Ok(p) => p,
        Err(e) => {
            let missing = format!(
                "share_root {} is not there: {e}. {}",
                share_root.display(),
                how_to_mount(share_root)
            );
            // Below a mounted share, it can be made there.
            let parent = share_root
                .ancestors()
                .skip(1)
                .find_map(|a| Some((a, std::fs::canonicalize(a).ok()?)));
            return match parent {
                Some((a, real_a)) if require_mount && e.kind() == std::io::ErrorKind::NotFound => {
                    let text = read_table()?;
                    match mounted(&real_a, a, allow_local_volume, &text) {
                        Ok(_) => Ok(Found::Missing(
                            mount_description(a).unwrap_or_else(|| a.display().to_string()),
                        )),
                        Err(_) => Err(missing),
                    }
                }
                _ => Err(missing),
            };
        }
    };
    if !real.is_dir() {
        return Err(format!(
            "share_root {} is not a directory",
            share_root.display()
        ));
    }
    if !require_mount {
        return Ok(Found::Ready(None));
    }
    let text = read_table()?;
    mounted(&real, share_root, allow_local_volume, &text).map(Found::Ready)
}

/// Check that the share is there (and mounted, if required). With `wait`,
/// keep looking for up to `mount_timeout`, waking when the mount table
/// changes (mountinfo polls POLLPRI on changes) or a signal asks us to stop.
pub(crate) fn check_share(cfg: &Config, wait: bool) -> Result<()> {
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
        let why = match problem(
            &cfg.share_root,
            cfg.require_mount,
            cfg.allow_local_volume,
            &mut mountinfo,
        ) {
            Ok(Found::Ready(note)) => {
                if let Some(note) = note.filter(|_| wait) {
                    crate::info!("{note}");
                }
                return Ok(());
            }
            // Linking makes it (then looks again); `status` and dry runs
            // never write.
            Ok(Found::Missing(on)) if wait => {
                std::fs::create_dir_all(&cfg.share_root).map_err(|e| {
                    crate::link::advice::explain(
                        cfg,
                        Error::io("create share_root", &cfg.share_root, e),
                    )
                })?;
                crate::info!(
                    "created share_root {}, which was missing, on {on}",
                    cfg.share_root.display()
                );
                continue;
            }
            Ok(Found::Missing(on)) => {
                return Err(Error::ShareUnavailable(format!(
                    "share_root {} does not exist yet; it is below {on}, and `sharelink link` or `run` \
                     creates it",
                    cfg.share_root.display()
                )))
            }
            Err(why) => why,
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

    /// Lines as a container shows them (Docker 20, fuse-overlayfs root).
    const DOCKER: &[u8] = b"72 48 0:40 / / rw,nodev,noatime master:2 - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0\n\
74 72 0:43 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n\
88 74 0:50 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k\n\
90 72 254:0 /var/lib/docker/containers/58243f8330034f3c0dff597c85274d144e4da283c5b0cc9cedfcc21ca1c022f6/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw\n";
    const ANONYMOUS: &[u8] = b"89 72 254:0 /var/lib/docker/volumes/65fa3bf473d581f6c4fd5366b0b18b6a200deee157e7d092ad949020b9426dae/_data /mnt/fileshare rw,relatime master:1 - ext4 /dev/vda rw,discard\n";
    const NAMED: &[u8] = b"89 72 254:0 /var/lib/docker/volumes/nu_named_vol/_data /mnt/fileshare rw,relatime master:1 - ext4 /dev/vda rw,discard\n";
    const BIND: &[u8] =
        b"89 72 254:0 /srv/local_fileshare /mnt/fileshare rw,relatime - ext4 /dev/vda rw,discard\n";
    const CIFS: &[u8] = b"89 72 0:61 / /mnt/fileshare rw,relatime - cifs //acct.file.core.windows.net/share rw,vers=3.1.1\n";

    fn check(extra: &[u8], share: &str, allow: bool) -> Result<Option<String>, String> {
        let text = [DOCKER, extra].concat();
        mounted(Path::new(share), Path::new(share), allow, &text)
    }

    #[test]
    fn share_root_at_or_below_a_mount() {
        for m in [BIND, CIFS] {
            assert_eq!(check(m, "/mnt/fileshare", false), Ok(None));
            let note = check(m, "/mnt/fileshare/etl-prod", false).unwrap().unwrap();
            assert!(note.contains("mounted at /mnt/fileshare"), "{note}");
        }
        let note = check(CIFS, "/mnt/fileshare/etl-prod/x", false)
            .unwrap()
            .unwrap();
        assert!(
            note.contains("cifs") && note.contains("//acct.file"),
            "{note}"
        );
        // Nothing mounted: on the container's root.
        for share in ["/mnt/fileshare", "/mnt/fileshare/etl-prod"] {
            let e = check(b"", share, false).unwrap_err();
            assert!(
                e.contains("not a mount point") && e.contains("root filesystem"),
                "{e}"
            );
            assert!(
                e.contains("docker run -v") && e.contains("volumeMount"),
                "{e}"
            );
        }
        // Below a tmpfs: local, not a share.
        let e = check(b"", "/dev/shm/share", false).unwrap_err();
        assert!(e.contains("tmpfs"), "{e}");
    }

    #[test]
    fn docker_volumes_on_the_local_disk_are_refused_unless_allowed() {
        for share in ["/mnt/fileshare", "/mnt/fileshare/etl-prod"] {
            let e = check(ANONYMOUS, share, false).unwrap_err();
            assert!(
                e.contains("anonymous Docker volume") && e.contains("VOLUME"),
                "{e}"
            );
            assert!(e.contains("allow_local_volume = true"), "{e}");
            let e = check(NAMED, share, false).unwrap_err();
            assert!(e.contains("\"nu_named_vol\""), "{e}");
            assert!(check(ANONYMOUS, share, true).is_ok());
            assert!(check(NAMED, share, true).is_ok());
        }
        // A Docker volume backed by the share itself (driver_opts type
        // cifs) shows the share's root, "/", not the volumes directory.
        assert_eq!(check(CIFS, "/mnt/fileshare", false), Ok(None));
        assert!(is_anonymous_volume(
            "65fa3bf473d581f6c4fd5366b0b18b6a200deee157e7d092ad949020b9426dae"
        ));
        assert!(!is_anonymous_volume("nu_named_vol"));
    }

    #[test]
    fn unescapes_only_octal() {
        assert_eq!(unescape(b"a\\134b"), "a\\b");
        assert_eq!(unescape(b"a\\9"), "a\\9");
        assert_eq!(unescape(b"tail\\"), "tail\\");
    }
}
