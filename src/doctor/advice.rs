//! The advice: one line per problem, each naming its cause and its fix.
//! Pure functions of what was read and measured, so each rule is tested
//! with real mountinfo lines.

use std::fmt;
use std::time::Duration;

use super::capabilities::Measured;
use super::mount::{FsFamily, MountEntry};
use super::report::decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advice {
    pub(crate) level: Level,
    pub(crate) message: String,
}

impl Advice {
    pub(crate) fn new(level: Level, message: impl Into<String>) -> Advice {
        Advice {
            level,
            message: message.into(),
        }
    }
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:5}  {}", self.level.name(), self.message)
    }
}

/// Where an SMB mount option is set, in each way this project deploys.
const WHERE_SMB: &str = "set it in docker-compose (the volume's `driver_opts: o:`), \
in the azurefile-csi StorageClass `mountOptions` (AKS) or in the Container Apps \
storage's `mountOptions`";

/// The run user, as the mount options are judged against it.
#[derive(Debug, Clone)]
pub(crate) struct RunUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
}

/// Advice from a mount's type and options alone.
pub(crate) fn from_mount(m: &MountEntry, user: Option<&RunUser>) -> Vec<Advice> {
    let at = m.mount_point.display();
    let mut out = Vec::new();
    match m.family() {
        FsFamily::Smb => {
            if !m.has("mfsymlinks") {
                out.push(Advice::new(
                    Level::Warn,
                    format!(
                    "{at}: {} mounted without `mfsymlinks`: creating a symlink in the share fails \
                     (EOPNOTSUPP), so symlinks in the baked data cannot be kept and the pipeline \
                     cannot make any. Add `mfsymlinks`: {WHERE_SMB}", m.fs_type),
                ));
            }
            if !m.has("nobrl") {
                out.push(Advice::new(
                    Level::Warn,
                    format!(
                    "{at}: {} mounted without `nobrl`: byte-range locks go to the server, which \
                     enforces them as mandatory locks, so SQLite fails with \"database is locked\" \
                     (HDF5 and other lock users too). Add `nobrl` (locks then hold within one \
                     node): {WHERE_SMB}", m.fs_type),
                ));
            }
            out.extend(user.and_then(|u| smb_owner(m, u)));
        }
        FsFamily::Nfs => {
            if m.has("soft") {
                out.push(Advice::new(
                    Level::Warn,
                    format!(
                        "{at}: {} mounted `soft`: a server that is slow to answer turns into I/O \
                     errors in the middle of writes. Mount it `hard`",
                        m.fs_type
                    ),
                ));
            }
            if m.has("nolock") || matches!(m.option("local_lock"), Some("all" | "posix")) {
                out.push(Advice::new(
                    Level::Info,
                    format!(
                    "{at}: {} mounted with local locks (`nolock`/`local_lock`): byte-range locks \
                     hold only on this client, not across replicas", m.fs_type),
                ));
            }
        }
        FsFamily::Fuse => {
            out.push(Advice::new(
                Level::Info,
                format!(
            "{at}: a FUSE filesystem ({} from {}): what it keeps is what the probes measured, \
             not something its options tell", m.fs_type, m.source),
            ))
        }
        FsFamily::Local => out.push(Advice::new(
            Level::Warn,
            format!(
            "{at}: a local filesystem ({}, from {}: a docker volume or a bind mount of a local \
             directory), not a network share: other hosts and replicas do not see this data. \
             Fine for local development; in production mount the file share here",
            m.fs_type, m.source),
        )),
        FsFamily::Other => {}
    }
    out
}

/// SMB shows every entry with the mount's `uid`, `gid`, `file_mode` and
/// `dir_mode` (defaults: root, 0755): can the run user write under them?
#[inline(never)]
fn smb_owner(m: &MountEntry, u: &RunUser) -> Option<Advice> {
    if u.uid == 0 || m.has("noperm") {
        return None;
    }
    let num = |k: &str, radix: u32, default: u32| {
        m.option(k)
            .and_then(|v| u32::from_str_radix(v, radix).ok())
            .unwrap_or(default)
    };
    let (uid, gid) = (num("uid", 10, 0), num("gid", 10, 0));
    let (file_mode, dir_mode) = (num("file_mode", 8, 0o755), num("dir_mode", 8, 0o755));
    // The class of bits that applies to the user: owner, group or other.
    let shift = if u.uid == uid {
        6
    } else if u.groups.contains(&gid) || u.gid == gid {
        3
    } else {
        0
    };
    let dir_ok = (dir_mode >> shift) & 0o3 == 0o3;
    let file_ok = (file_mode >> shift) & 0o2 == 0o2;
    if dir_ok && file_ok {
        return None;
    }
    let what = match (dir_ok, file_ok) {
        (false, false) => "create entries or write files",
        (false, true) => "create entries",
        _ => "write files",
    };
    Some(Advice::new(
        Level::Warn,
        format!(
            "{}: {} shows every entry as uid {uid}, gid {gid}, dir_mode {dir_mode:04o}, file_mode \
         {file_mode:04o} (its `uid=`/`gid=`/`dir_mode=`/`file_mode=`), so the run user {} \
         (uid {}, gid {}) cannot {what} there. Set `uid={},gid={}` (or modes that let its \
         group write, e.g. `dir_mode=0770,file_mode=0770`): {WHERE_SMB}",
            m.mount_point.display(),
            m.fs_type,
            u.name,
            u.uid,
            u.gid,
            u.uid,
            u.gid
        ),
    ))
}

/// How long a client may show stale attributes of another's file:
/// `actimeo` (cifs default 1 s; nfs `acregmax`, default 60 s).
pub(crate) fn attr_cache(m: Option<&MountEntry>) -> Duration {
    let Some(m) = m else { return Duration::ZERO };
    let secs = |k: &str| m.option(k).and_then(|v| v.parse::<u64>().ok());
    Duration::from_secs(match m.family() {
        FsFamily::Smb => secs("actimeo").unwrap_or(1),
        FsFamily::Nfs => secs("actimeo").or_else(|| secs("acregmax")).unwrap_or(60),
        _ => 0,
    })
}

/// Advice from what the probes measured. Problems an SMB mount's options
/// already explained are not repeated.
#[inline(never)]
pub(crate) fn from_measured(
    m: &Measured,
    mount: Option<&MountEntry>,
    lease: Duration,
) -> Vec<Advice> {
    let smb = mount.filter(|e| e.family() == FsFamily::Smb);
    let explained = |opt: &str| smb.is_some_and(|e| !e.has(opt));
    let s = &m.supports;
    let mut out = Vec::new();
    let mut add = |cond: bool, level: Level, msg: &str| {
        if cond {
            out.push(Advice::new(level, msg));
        }
    };
    add(!s.symlinks && !explained("mfsymlinks"), Level::Warn,
        "the share does not keep symlinks: symlinks in the baked data cannot be kept and the pipeline cannot make any there");
    add(!s.byte_range_locks && !explained("nobrl"), Level::Warn,
        "byte-range locks (fcntl) do not work as advisory locks here (refused, not enforced, or enforced as mandatory): SQLite and other lock users fail; on SMB mount with `nobrl`");
    add(m.case_insensitive, Level::Warn,
        "the share ignores case in names (made `case-probe`, found `CASE-PROBE`): names in one directory that differ only in case are one file; `link` refuses such a tree (exit 65) before copying");
    add(!s.hard_links, Level::Info,
        "hard links are not kept: files hard-linked to each other in the baked data become separate copies");
    add(!s.xattrs, Level::Info,
        "extended attributes (`user.*`) are not kept: they are dropped, with a warning, when data moves in");
    add(!s.modes, Level::Info,
        "permission bits are not kept (chmod is refused or ignored): who may write comes from the mount options");
    add(
        m.owners_probed && !s.owners,
        Level::Info,
        "owners are not kept (chown is refused or ignored): every entry shows the mount's owner",
    );
    add(!m.owners_probed, Level::Info,
        "owners were not probed: only root can give a file away; run doctor as the container's root");
    add(!s.special_files, Level::Info,
        "special files (FIFOs, sockets, devices) cannot be made: they hold no data and are left out when data moves in");
    out.extend(round_trip(m.round_trip_ms));
    out.extend(
        m.clock_skew_ms
            .and_then(|s| skew(s, lease, attr_cache(mount))),
    );
    out
}

/// Above this a first start of many files is slow.
const SLOW_ROUND_TRIP_MS: f64 = 20.0;

fn round_trip(ms: f64) -> Option<Advice> {
    (ms >= SLOW_ROUND_TRIP_MS).then(|| {
        Advice::new(
            Level::Warn,
            format!(
        "round trip {} ms: each file moved costs several, so a first start with much baked \
         data is slow; keep the share in the cluster's region and raise `[migration] \
         parallelism` (more in flight hides latency)", decimal(ms, 1)),
        )
    })
}

/// A live lock looks older than it is by up to lease/4 (the refresh),
/// the attribute cache and the skew: past the lease it is broken.
fn skew(skew_ms: f64, lease: Duration, attr_cache: Duration) -> Option<Advice> {
    let margin = (lease.as_secs_f64() * 0.75 - attr_cache.as_secs_f64()).max(0.0);
    let abs = skew_ms.abs() / 1e3;
    if abs < margin / 2.0 {
        return None;
    }
    let how = if abs >= margin { "exceeds" } else { "is near" };
    Some(Advice::new(
        Level::Warn,
        format!(
            "the share's clock and this host's differ by {} s, which {how} what the migration \
         lock tolerates ({} s: lease {} s − lease/4 − attribute cache {} s): another \
         replica may take a live lock over. Sync the clocks (NTP/chrony) or raise \
         SHARELINK_LOCK_LEASE on every replica",
            decimal(abs, 1),
            decimal(margin, 0),
            lease.as_secs(),
            attr_cache.as_secs()
        ),
    ))
}

#[cfg(test)]
#[path = "advice_tests.rs"]
mod tests;
