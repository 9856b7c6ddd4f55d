//! Everything doctor does that touches the share, in one function run on
//! a worker thread, so the caller can give up on a share that does not
//! answer (a hung SMB or NFS mount blocks the calling thread in the
//! kernel, and nothing but a deadline outside it helps).

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::capabilities::{self, Measured};
use super::mount::mount_of;
use super::probe::{self, ProbeArea};
use super::runuser::{self, Denied, Step, Target};
use crate::config::Config;
use crate::fs::dir::Dir;
use crate::init::user::Credentials;
use crate::link::{mounts, status};

/// What the share said.
pub(crate) struct ShareFacts {
    /// Why the share is unavailable (as `link` says it: exit 69).
    pub(crate) unavailable: Option<String>,
    /// `share_root` resolved, when it exists.
    pub(crate) real_root: Option<PathBuf>,
    /// The probes, or why doctor could not write its probe directory.
    pub(crate) measured: Option<Result<Measured, ProbeFailure>>,
    pub(crate) free_bytes: Option<u64>,
    /// Per link share target (in config order): the run user's outcome,
    /// `None` when not checked (no run user, or the target is not there
    /// yet: `link` creates it and gives it to the run user).
    pub(crate) user: Vec<Option<UserOutcome>>,
    /// Per link: the round trip and free space of its share target, when
    /// that is on a mount of its own (read-only: a `stat` of fresh names).
    pub(crate) other: Vec<Option<(Option<f64>, Option<u64>)>>,
    /// Probe entries that could not be removed.
    pub(crate) left_behind: Vec<String>,
    pub(crate) status: status::Report,
}

#[derive(Debug)]
pub(crate) struct ProbeFailure {
    pub(crate) what: String,
    pub(crate) source: io::Error,
}

/// The run user's outcome for one share target.
pub(crate) enum UserOutcome {
    Checked(Denied),
    /// The target could not be opened (not a directory, a symlink).
    NotChecked(io::Error),
}

/// Look at the share: the mount guard, the probes, the run user, status.
pub(crate) fn look(cfg: &Config, user: Option<&Credentials>, mountinfo: &[u8]) -> ShareFacts {
    let unavailable = mounts::check_share(cfg, false).err().map(|e| e.to_string());
    let real_root = std::fs::canonicalize(&cfg.share_root).ok();
    let mut facts = ShareFacts {
        unavailable,
        real_root,
        measured: None,
        free_bytes: None,
        user: cfg.links.iter().map(|_| None).collect(),
        other: cfg.links.iter().map(|_| None).collect(),
        left_behind: Vec::new(),
        status: status::status(cfg),
    };
    if facts.unavailable.is_some() {
        return facts;
    }
    let root = match Dir::open(&cfg.share_root) {
        Ok(d) => d,
        Err(e) => {
            facts.measured = Some(Err(ProbeFailure {
                what: format!("open {}", cfg.share_root.display()),
                source: e,
            }));
            return facts;
        }
    };
    facts.free_bytes = probe::free_bytes(&root);
    if let Some(real) = &facts.real_root {
        facts.other = other_mounts(cfg, &root, real, mountinfo);
    }
    let area = match ProbeArea::create(&root) {
        Ok(a) => a,
        Err(e) => {
            facts.measured = Some(Err(ProbeFailure {
                what: e.what,
                source: e.source,
            }));
            return facts;
        }
    };
    facts.measured = Some(
        capabilities::probe(&area.dir, cfg.migration.threads(&cfg.share_root)).map_err(|e| {
            ProbeFailure {
                what: format!("create a probe file in {}", area.rel_name()),
                source: e,
            }
        }),
    );
    let mut mirrors = Vec::new();
    if let Some(u) = user {
        facts.user = check_user(cfg, &root, &area, u, &mut mirrors);
    }
    let mut names: Vec<&str> = capabilities::NAMES.to_vec();
    names.push(runuser::PROBE);
    facts.left_behind = area.remove(&root, &names, &mirrors);
    facts
}

/// The run user's outcome per share target; the mirror directories made
/// go to `mirrors` for the cleanup.
#[inline(never)]
fn check_user(
    cfg: &Config,
    root: &Dir,
    area: &ProbeArea,
    user: &Credentials,
    mirrors: &mut Vec<String>,
) -> Vec<Option<UserOutcome>> {
    let mut out: Vec<Option<UserOutcome>> = cfg.links.iter().map(|_| None).collect();
    let mut targets = Vec::new();
    let mut index = Vec::new();
    for (i, link) in cfg.links.iter().enumerate() {
        let dir = match open_below(root, &link.share) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => {
                out[i] = Some(UserOutcome::NotChecked(e));
                continue;
            }
        };
        let name = format!("user-{i}");
        match runuser::mirror(&area.dir, &name, &dir) {
            Ok(mirror) => {
                mirrors.push(name);
                targets.push(Target { dir, mirror });
                index.push(i);
            }
            Err(e) => out[i] = Some(UserOutcome::NotChecked(e)),
        }
    }
    match runuser::check(user, &targets) {
        Ok(results) => {
            for (i, r) in index.into_iter().zip(results) {
                out[i] = Some(match r {
                    // Not becoming the user (doctor not run as root) says
                    // nothing about the share.
                    Some((Step::Switch, e)) => UserOutcome::NotChecked(io::Error::new(
                        e.kind(),
                        format!("cannot become the user to check (run doctor as root): {e}"),
                    )),
                    r => UserOutcome::Checked(r),
                });
            }
        }
        Err(e) => {
            for i in index {
                out[i] = Some(UserOutcome::NotChecked(io::Error::new(
                    e.kind(),
                    e.to_string(),
                )));
            }
        }
    }
    out
}

/// For each link whose share target is on another mount than
/// `share_root`: its round trip and free space.
#[inline(never)]
fn other_mounts(
    cfg: &Config,
    root: &Dir,
    real_root: &Path,
    mountinfo: &[u8],
) -> Vec<Option<(Option<f64>, Option<u64>)>> {
    let root_mount = mount_of(mountinfo, real_root).map(|m| m.mount_point);
    cfg.links
        .iter()
        .map(|l| {
            let m = mount_of(mountinfo, &real_root.join(&l.share))?;
            if Some(&m.mount_point) == root_mount.as_ref() {
                return None;
            }
            let dir = open_below(root, &l.share).ok();
            Some((
                dir.as_ref().and_then(|d| capabilities::round_trip(d).ok()),
                dir.as_ref().and_then(probe::free_bytes),
            ))
        })
        .collect()
}

/// Open `rel` below `root` one component at a time, never following a
/// symlink (the share is writable by others).
fn open_below(root: &Dir, rel: &Path) -> io::Result<Dir> {
    let mut d = root.try_clone()?;
    for c in rel.components() {
        if let Component::Normal(n) = c {
            d = d.open_dir(OsStr::new(n))?;
        }
    }
    Ok(d)
}
