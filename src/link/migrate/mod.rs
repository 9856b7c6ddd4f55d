//! Moving a baked app directory into the share: nothing the app holds is
//! ever lost.
//!
//! The app directory usually sits in an overlayfs image layer (renaming it
//! gives EXDEV) and the share is another filesystem, so a move is a copy
//! and a delete. The rules, each enforced here by construction:
//!
//! - Every app entry ends up whole in the share target or under
//!   `.sharelink/displaced/`, or stays where it is. At every instant each
//!   file exists whole in the app directory, in the share target, or in a
//!   staging or displaced area that the next run finishes from; a share
//!   target never shows a half-made copy (copies are staged beside it and
//!   committed by rename).
//! - An app entry is deleted only if a durable copy with the same content
//!   exists (copied and synced by this migration, or found identical by
//!   bytes) and the entry still has the identity (inode, size, mtime,
//!   ctime) it had when that copy was made or compared ([`prune`]).
//!   Entries that change or appear meanwhile are copied again in a later
//!   pass; after a few passes the run stops with them in place.
//! - An app entry whose content differs from what the share holds at its
//!   path is set aside under `displaced/`, never dropped; in `merge` mode,
//!   or for late arrivals of a migration this container committed itself,
//!   entries the share lacks are copied in (never overwriting).
//! - Copies are staged resumably ([`copy`]): a run killed part-way is
//!   continued, not restarted, by the next.
//!
//! The states a link's migration can be in are recognisable on disk
//! ([`Leftovers`]) and `status` reports them.

pub mod compare;
pub mod copy;
pub mod guardian;
pub mod inventory;
pub mod journal;
pub mod preview;
pub mod progress;
pub mod prune;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Link, MigrateMode, RESERVED_DIR};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fs::attrs::{Fidelity, Loss};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind};
use crate::fs::{names, pool, tree};
use crate::link::lock::Lock;
use crate::signals;

use compare::Verdict;
use copy::{Sel, Staging};
use inventory::{Inventory, Ix, Totals};
pub use progress::Progress;

/// How long an entry must have been unchanged before its identity is
/// trusted to tell versions apart: file timestamps come from a clock that
/// ticks every few milliseconds, so a change within the same tick as a
/// `stat` would not move them.
pub const SETTLE_NS: i128 = 100_000_000;

/// Passes over the app directory before giving up on entries that keep
/// changing.
const PASSES: usize = 6;

/// Every failpoint name, in the order a migration reaches them; the
/// fault-injection tests sweep these.
pub const FAILPOINTS: &[&str] = &[
    "lock.acquired",
    "staging.created",
    "staging.file",
    "staging.journal",
    "staging.synced",
    "commit.renamed",
    "commit.marked",
    "commit.synced",
    "replace.checked",
    "replace.aside",
    "merge.moved",
    "displace.renamed",
    "supersede.kept",
    "supersede.replaced",
    "prune.leased",
    "prune.unlinked",
    "prune.entry",
    "prune.done",
    "keep.removed",
    "swap.temp",
];

/// Suffixes of sharelink's own names beside the entries they belong to.
pub const STAGING_SUFFIX: &str = "sharelink-staging";
const MARKER_SUFFIX: &str = "sharelink-committed";
/// Beside the app directory: this container has started deleting app
/// entries, so the staging journal may name copies of entries that are gone
/// (and a writer may have made new files under their names).
const PRUNING_SUFFIX: &str = "sharelink-pruning";

/// What an interrupted migration of one link left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// A staging directory beside the share target: a copy in progress.
    pub staging: bool,
    /// A `<stamp>.partial` under `displaced/`: a set-aside copy in progress.
    pub displacing: bool,
    /// This container committed its copy to the share and had not finished
    /// emptying the app directory or making the symlink.
    pub committed: bool,
    /// A run (here or in another container) committed its copy and did not
    /// finish: its journal is still beside the share target.
    pub journal: bool,
}

impl Leftovers {
    pub fn any(&self) -> bool {
        self.staging || self.displacing || self.committed || self.journal
    }

    /// For `status`: what the next run will finish.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.staging {
            parts.push("a copy into the share was interrupted; the next run resumes it");
        }
        if self.displacing {
            parts.push("setting conflicting files aside was interrupted; the next run resumes it");
        }
        if self.committed {
            parts.push("the data is in the share; the next run finishes emptying the app directory and makes the symlink");
        } else if self.journal && !self.staging {
            parts.push("a copy into the share was committed by a run that did not finish; the next run checks what is left here against it and finishes");
        }
        parts.join("; ")
    }
}

/// Where the leftovers of `link`'s migration would be.
pub struct Places {
    pub staging: PathBuf,
    pub marker: PathBuf,
    pub pruning: PathBuf,
    /// `<share_root>/.sharelink/displaced/<share path>`, relative to the
    /// share root: keyed like the lock, so that only the lock's holder
    /// writes or clears it (two services with the same app path and other
    /// share paths must not clear each other's copies).
    pub displaced: PathBuf,
}

impl Places {
    pub fn new(cfg: &Config, link: &Link) -> Places {
        Places {
            staging: names::sibling(&cfg.share_path(link), STAGING_SUFFIX, 0),
            marker: names::sibling(&cfg.app_path(link), MARKER_SUFFIX, 0),
            pruning: names::sibling(&cfg.app_path(link), PRUNING_SUFFIX, 0),
            displaced: Path::new(RESERVED_DIR).join("displaced").join(&link.share),
        }
    }

    /// Look for leftovers (a few `lstat`s; only asked when the app path is
    /// still a directory or missing). The share side is looked at through
    /// directories opened from the share root without following symlinks.
    pub fn leftovers(&self, cfg: &Config, link: &Link) -> Leftovers {
        let root = Dir::open(&cfg.share_root).ok();
        let beneath = |rel: &Path| root.as_ref().and_then(|r| tree::open_beneath(r, rel).ok());
        let in_share = |dir: &Option<Dir>, name: &OsStr| {
            dir.as_ref()
                .is_some_and(|d| d.stat_at(name).ok().flatten().is_some())
        };
        let displacing = beneath(&self.displaced)
            .and_then(|d| d.list().ok())
            .is_some_and(|l| {
                l.iter()
                    .any(|(n, _)| n.as_encoded_bytes().ends_with(b".partial"))
            });
        let (parent_rel, name) = split_rel(&link.share);
        let staging = beneath(parent_rel)
            .and_then(|p| p.open_dir(&names::hidden(name, STAGING_SUFFIX, 0)).ok());
        Leftovers {
            // After the commit only the journal stays, until the end.
            staging: in_share(&staging, OsStr::new(copy::TREE)),
            displacing,
            committed: std::fs::symlink_metadata(&self.marker).is_ok(),
            journal: in_share(&staging, OsStr::new(journal::NAME)),
        }
    }
}

/// Remove the marker of a committed migration (and the pruning flag) once
/// the link is made.
pub fn forget(cfg: &Config, link: &Link) {
    let places = Places::new(cfg, link);
    for m in [places.marker, places.pruning] {
        match std::fs::remove_file(&m) {
            Ok(()) => crate::debug!("migration finished: removed {}", m.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::warn!("could not remove {}: {e}", m.display()),
        }
    }
}

/// The lock's freshness as the workers see it: they make nothing new on
/// the share unless the heartbeat confirmed the lock recently, so a run
/// that was frozen past its lease (and may have lost the lock to another
/// replica) stops before it touches anything.
#[derive(Debug)]
pub struct Fresh {
    base: Instant,
    last_ok_ms: AtomicU64,
    failed: AtomicBool,
}

/// How stale the last lock confirmation may be before workers wait.
const FRESH_FOR: Duration = Duration::from_secs(3);

impl Fresh {
    fn new() -> Fresh {
        Fresh {
            base: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ok_ms.store(self.now_ms(), Relaxed);
    }

    /// Block until the lock was confirmed within `FRESH_FOR`.
    pub fn wait(&self) -> Result<()> {
        loop {
            if self.failed.load(Relaxed) {
                return Err(Error::LockLost(
                    "the lock could not be confirmed; stopping".into(),
                ));
            }
            if self.now_ms().saturating_sub(self.last_ok_ms.load(Relaxed))
                < FRESH_FOR.as_millis() as u64
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What one migration needs besides the config: the lock it runs under,
/// and what its workers share.
pub struct Ctx<'a> {
    pub threads: usize,
    pub lock: &'a mut Lock,
    pub fidelity: Fidelity,
    pub progress: Progress,
    pub fresh: Fresh,
    pub app_path: PathBuf,
}

impl Ctx<'_> {
    /// Run by the coordinating thread while workers work: signals, the
    /// lock's lease, progress.
    pub fn beat(&mut self) -> Result<()> {
        heartbeat(self.lock, &self.fresh, &self.progress)
    }
}

/// [`Ctx::beat`], for callers that lent the rest of the context to workers.
pub fn heartbeat(lock: &mut Lock, fresh: &Fresh, progress: &Progress) -> Result<()> {
    match signals::check_interrupt().and_then(|_| lock.keepalive()) {
        Ok(()) => {
            fresh.touch();
            if let Some(snap) = progress.maybe_log() {
                lock.publish(&progress::Published::of(&snap).to_text());
            }
            Ok(())
        }
        Err(e) => {
            fresh.failed.store(true, Relaxed);
            Err(e)
        }
    }
}

/// What a migration did, for the per-link log line.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Copied into the share target.
    pub copied: copy::Stats,
    /// App files found byte-identical on the share (dropped from the app).
    pub identical: u64,
    /// Set aside under `displaced/`, and where the newest copy is.
    pub displaced: copy::Stats,
    pub displaced_to: Option<PathBuf>,
    /// Entries that were already set aside by an earlier run.
    pub already_displaced: u64,
    /// Our own earlier copies replaced by a newer version of the app file.
    pub replaced: u64,
    /// Share entries replaced by the image's version (`image-wins`), each
    /// kept under `displaced/` first.
    pub superseded: u64,
    /// Set-aside copies removed by `keep`.
    pub expired: u64,
    /// What the share could not hold, per kind.
    pub losses: Vec<(Loss, u64)>,
    pub passes: usize,
}

/// What to do with one app entry, given how it compares with the share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The share has it: delete it from the app side (if still unchanged).
    Drop,
    /// Copy it into the share target (never overwriting).
    CopyIn,
    /// Keep a copy under `displaced/`, then delete it from the app side.
    SetAside,
    /// Replace the share's entry, which is this run's own older copy of it.
    Replace,
    /// `image-wins`: keep the share's entry under `displaced/`, then put
    /// the app's version in its place.
    Supersede,
    /// Leave it for a later pass.
    Wait,
    /// A directory on both sides: its entries decide.
    Descend,
}

/// The rules of "What linking does" for one entry. `own`: this container
/// committed the migration into the share target (so what the share lacks
/// arrived late and belongs in it); `ours`: the share's differing entry is
/// a copy this run made and nobody changed since.
pub fn step(v: Verdict, kind: Kind, mode: MigrateMode, own: bool, ours: bool) -> Step {
    match v {
        Verdict::Same { .. } => Step::Drop,
        Verdict::BothDirs => Step::Descend,
        Verdict::Unsettled | Verdict::Changed => Step::Wait,
        Verdict::AppOnly if mode != MigrateMode::IfEmpty || own => Step::CopyIn,
        Verdict::AppOnly => Step::SetAside,
        // Our own copy of an older version of this very app file: nobody
        // else's version, so nothing to keep (in `image-wins` too: keeping
        // it would set the image's own data aside as "the share's").
        Verdict::Differs { .. } if own && ours && kind == Kind::File => Step::Replace,
        Verdict::Differs { .. } if mode == MigrateMode::ImageWins => Step::Supersede,
        Verdict::Differs { .. } => Step::SetAside,
    }
}

/// How an `image-wins` replacement is carried out, by the kinds on both
/// sides (both directories never get here: their entries decide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swap {
    /// Non-directories on both sides: one rename over the share's entry,
    /// so a reader sees the old version or the new one, never neither.
    RenameOver,
    /// A directory in the image where the share has a non-directory: the
    /// share's entry is removed (it is kept already), then the staged
    /// directory is renamed in without replacing.
    RemoveThenRename,
    /// A directory on the share where the image has a non-directory: the
    /// share's tree stays and the app entry is set aside, as in `merge`.
    /// Deleting a tree on the share that the pipeline may be writing into
    /// is not worth a type change.
    KeepShare,
}

pub fn swap(app: Kind, share: Kind) -> Swap {
    match (app == Kind::Dir, share == Kind::Dir) {
        (_, true) => Swap::KeepShare,
        (true, false) => Swap::RemoveThenRename,
        (false, false) => Swap::RenameOver,
    }
}

/// Run one migration of `link` under `lock`: when it returns `Ok`, the app
/// directory is empty (the caller makes the symlink) and everything it held
/// is in the share target or under `displaced/`.
pub fn migrate(cfg: &Config, link: &Link, lock: &mut Lock, threads: usize) -> Result<Outcome> {
    let app_path = cfg.app_path(link);
    let share_path = cfg.share_path(link);
    let places = Places::new(cfg, link);
    let (app_parent_path, app_name) = split(&app_path);
    let app_parent =
        Dir::open(app_parent_path).map_err(|e| Error::io("open", app_parent_path, e))?;
    let app = app_parent
        .open_dir(app_name)
        .map_err(|e| Error::io("open directory", &app_path, e))?;
    let share_root =
        Dir::open(&cfg.share_root).map_err(|e| Error::io("open", &cfg.share_root, e))?;
    let (share_parent_rel, share_name) = split_rel(&link.share);
    let share_parent =
        Arc::new(tree::make_beneath(&share_root, share_parent_rel, &cfg.share_root)?.dir);
    let m = Migration {
        cfg,
        link,
        app_path: app_path.clone(),
        share_path,
        share_root,
        share_parent,
        share_name: share_name.to_os_string(),
        staging_name: names::hidden(share_name, STAGING_SUFFIX, 0),
        staging_path: places.staging.clone(),
        marker: places.marker.clone(),
        pruning: places.pruning.clone(),
        displaced_rel: places.displaced.clone(),
        used: Mutex::default(),
    };
    let mut ctx = Ctx {
        threads,
        lock,
        fidelity: Fidelity::default(),
        progress: Progress::new(link.app.display().to_string()),
        fresh: Fresh::new(),
        app_path,
    };
    ctx.fresh.touch();
    // Read before any worker runs (reading it means setting it).
    crate::fs::attrs::umask();
    let r = m.run(&app_parent, &app, &mut ctx);
    // A lease broken while we deleted sends SIGIO; it is ours, not the
    // command's.
    signals::discard(libc::SIGIO);
    let mut out = r?;
    out.losses = ctx.fidelity.losses();
    if let Some(keep) = link.keep {
        match m.retain(keep, &mut ctx) {
            Ok(n) => out.expired = n,
            // A signal or a lost lock stops the run as anywhere else.
            Err(e @ (Error::Interrupted(_) | Error::LockLost(_))) => return Err(e),
            // The data is where it belongs: old copies staying a while
            // longer must not keep the pipeline from starting.
            Err(e) => crate::warn!(
                "could not remove old set-aside copies of {} (keep = {keep}): {e}",
                link.app.display()
            ),
        }
    }
    Ok(out)
}

/// Which complete set-aside copies `keep` removes, of `stamps` (name and
/// its time in seconds since the epoch) at `now`: never one in `used`
/// (this migration wrote it or relies on it).
pub fn expired(
    keep: crate::config::Keep,
    stamps: &[(String, u64)],
    now: u64,
    used: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    use crate::config::Keep;
    let mut v: Vec<&(String, u64)> = stamps.iter().collect();
    v.sort_unstable_by_key(|(n, _)| std::cmp::Reverse(stamp_key(n)));
    v.into_iter()
        .enumerate()
        .filter(|&(i, (_, t))| match keep {
            Keep::Count(n) => i >= n as usize,
            Keep::Age(d) => t.saturating_add(d.as_secs()) < now,
        })
        .map(|(_, (n, _))| n.clone())
        .filter(|n| !used.contains(n))
        .collect()
}

/// Replace `name` in `to` with the staged `name` in `from`, only if what is
/// replaced is exactly `expect` (our own older copy): that entry is opened
/// and checked, moved aside into the staging directory, and checked again
/// as what was moved (the inode that was checked, its size and mtime
/// unchanged); only then does the new copy take the name, never over
/// anything. `false`: it was not ours, and what was moved aside is back.
/// The entry's path `rel` (in the target) is recorded beside the aside
/// name first ([`where_name`]): a run killed in between leaves what it
/// moved aside (our old copy, or another writer's file that took the name
/// after the check) in the staging directory, and the next run puts it
/// back or keeps it ([`Migration::recover_asides`]) before anything else.
fn replace_checked(
    from: &Dir,
    to: &Dir,
    (name, rel): (&OsStr, &Path),
    staging: &Staging,
    aside: &OsStr,
    expect: &Identity,
) -> std::io::Result<bool> {
    // A regular file is held open, so that a write into it after the
    // check shows; anything else (image-wins replaces symlinks and
    // special files too) is checked by `lstat`.
    let checked = match to.stat_at(name)? {
        Some(m) if m.id == *expect => m,
        _ => return Ok(false),
    };
    let f = if checked.kind == Kind::File {
        match to.open_read(name) {
            Ok(f) => Some(f),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENXIO)
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some(f) = &f {
        let held = crate::fs::meta::fstat(f)?;
        if held.kind != Kind::File || held.id != *expect {
            return Ok(false);
        }
    }
    failpoint::hit("replace.checked");
    let recorded = where_name(aside);
    let mut tmp = recorded.clone();
    tmp.push(".tmp");
    staging
        .dir()
        .write_replace(&tmp, &recorded, rel.as_os_str().as_encoded_bytes())?;
    // A leftover of a killed run was recovered before this run began:
    // never over anything.
    if let Err(e) = to.rename_noreplace(name, staging.dir(), aside) {
        let _ = staging.dir().unlink(&recorded);
        return Err(e);
    }
    failpoint::hit("replace.aside");
    let moved = staging.dir().stat_at(aside)?;
    let unwritten = match &f {
        Some(f) => {
            let now = crate::fs::meta::fstat(f)?;
            now.id.size == checked.id.size && now.id.mtime == checked.id.mtime
        }
        None => true,
    };
    let same =
        moved.is_some_and(|m| m.id.ino == checked.id.ino && m.dev == checked.dev) && unwritten;
    if !same {
        // Not what was checked (another writer's entry took the name, or
        // wrote into it): it goes back (if that fails, the next run puts
        // it back or keeps it).
        staging.dir().rename_noreplace(aside, to, name)?;
        let _ = staging.dir().unlink(&recorded);
        return Ok(false);
    }
    match from.rename_noreplace(name, to, name) {
        Ok(()) => {}
        // Something took the name meanwhile: it stays; our old copy
        // (replaced either way) goes, and the app entry is compared again.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
            staging.dir().unlink(aside)?;
            let _ = staging.dir().unlink(&recorded);
            return Ok(false);
        }
        Err(e) => {
            if staging.dir().rename_noreplace(aside, to, name).is_ok() {
                let _ = staging.dir().unlink(&recorded);
            }
            return Err(e);
        }
    }
    match staging.dir().unlink(aside) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => {
            let _ = staging.dir().unlink(&recorded);
            Ok(true)
        }
    }
}

/// Beside an aside name, the file recording the path (in the target) of
/// what it holds.
fn where_name(aside: &OsStr) -> OsString {
    let mut n = aside.to_os_string();
    n.push(".where");
    n
}

/// Whether `name` in a staging directory is one [`aside_name`] makes.
pub fn is_aside(name: &OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix(copy::ASIDE))
        .and_then(|n| n.strip_prefix('.'))
        .is_some_and(|ix| !ix.is_empty() && ix.bytes().all(|b| b.is_ascii_digit()))
}

/// Where [`replace_checked`] moves the old copy of root `r` aside, in the
/// staging directory: one name per root, as replaces run in parallel.
fn aside_name(r: Ix) -> OsString {
    OsString::from(format!("{}.{r}", copy::ASIDE))
}

fn split(p: &Path) -> (&Path, &OsStr) {
    (
        p.parent().unwrap_or(Path::new("/")),
        p.file_name().unwrap_or_default(),
    )
}

fn split_rel(p: &Path) -> (&Path, &OsStr) {
    (
        p.parent().unwrap_or(Path::new("")),
        p.file_name().unwrap_or_default(),
    )
}

struct Migration<'a> {
    cfg: &'a Config,
    link: &'a Link,
    app_path: PathBuf,
    share_path: PathBuf,
    share_root: Dir,
    share_parent: Arc<Dir>,
    share_name: OsString,
    staging_name: OsString,
    staging_path: PathBuf,
    marker: PathBuf,
    pruning: PathBuf,
    displaced_rel: PathBuf,
    /// Set-aside stamps this migration wrote or found entries in.
    used: Mutex<std::collections::BTreeSet<String>>,
}

/// Which copies on the share count as this migration's own, so that a newer
/// version of the same app file replaces them instead of being set aside.
struct Own {
    /// Recorded while their app entries stayed (marker, earlier passes).
    placed: Placed,
    /// Deleted from the app directory by this run: a file there now under
    /// the same name is a new one (a writer made it), never a newer version.
    pruned: std::collections::HashSet<PathBuf>,
    /// Whether the staging journal may vouch too: not once this container
    /// has started deleting, as it cannot tell which entries a killed run
    /// deleted.
    journal: bool,
    /// Taken out of `placed` (and the marker) while their entries were
    /// being deleted; put back for those that stayed.
    held_back: Placed,
}

impl Own {
    /// Before deleting: the marker must never name an entry that may be
    /// gone (after a kill, a new file under its name would pass for a
    /// newer version of our copy), and the journal stops vouching.
    fn before_prune(
        &mut self,
        m: &Migration<'_>,
        inv: &Inventory,
        ledger: &Ledger,
        own: bool,
    ) -> Result<()> {
        if !ledger.deletable.iter().any(Option::is_some) {
            return Ok(());
        }
        if own && !self.placed.is_empty() {
            let before = self.placed.len();
            for (ix, d) in ledger.deletable.iter().enumerate() {
                if d.is_some() {
                    let rel = inv.rel(ix as Ix);
                    if let Some(r) = self.placed.remove(&rel) {
                        self.held_back.insert(rel, r);
                    }
                }
            }
            if self.placed.len() != before {
                m.mark_committed(&self.placed)?;
            }
        }
        if self.journal {
            std::fs::write(&m.pruning, b"").map_err(|e| Error::io("write", &m.pruning, e))?;
            self.journal = false;
        }
        Ok(())
    }

    /// After deleting: what went is never ours again; what stayed, with a
    /// copy of ours on the share, is.
    fn after_prune(&mut self, inv: &Inventory, ledger: &Ledger, pruned: &prune::Pruned) {
        let kept: std::collections::HashSet<Ix> = pruned.kept.iter().map(|&(ix, _)| ix).collect();
        for (ix, d) in ledger.deletable.iter().enumerate() {
            if d.is_some() && !kept.contains(&(ix as Ix)) {
                let rel = inv.rel(ix as Ix);
                self.placed.remove(&rel);
                self.pruned.insert(rel);
            }
        }
        // Only what stayed: a deleted name must never be vouched for again.
        let mut held_back = std::mem::take(&mut self.held_back);
        for &ix in &kept {
            if let Some(r) = held_back.remove(&inv.rel(ix)) {
                self.placed.insert(inv.rel(ix), r);
            }
            if let Some(id) = ledger.copies[ix as usize] {
                self.placed.insert(
                    inv.rel(ix),
                    journal::Record {
                        app: inv.get(ix).meta.id,
                        copy: id,
                    },
                );
            }
        }
    }
}

/// Per app entry, after a pass copied or compared it: the identity it must
/// still have to be deleted (a durable identical copy exists), and the
/// identity of our own copy on the share (regular files), to recognise it
/// in a later pass.
struct Ledger {
    deletable: Vec<Option<Identity>>,
    copies: Vec<Option<Identity>>,
}

impl Ledger {
    fn new(n: usize) -> Ledger {
        Ledger {
            deletable: vec![None; n],
            copies: vec![None; n],
        }
    }

    /// From a staged copy: faithful copies of non-directories may go.
    fn from_staged(inv: &Inventory, staged: &[Option<copy::Staged>]) -> Ledger {
        Ledger {
            deletable: staged
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.filter(|s| s.faithful && inv.entries[i].meta.kind != Kind::Dir)
                        .map(|s| s.app)
                })
                .collect(),
            copies: staged.iter().map(|s| s.and_then(|s| s.copy)).collect(),
        }
    }
}

/// Our own copies on the share (their identity there, in `app`) of entries
/// the app directory still holds, by relative path.
type Placed = HashMap<PathBuf, journal::Record>;

/// The share target as a pass finds it.
enum Target {
    /// Missing, or holding nothing but directories.
    Empty {
        exists: bool,
    },
    Full(Dir),
}

impl Migration<'_> {
    fn run(&self, app_parent: &Dir, app: &Dir, ctx: &mut Ctx<'_>) -> Result<Outcome> {
        let mut out = Outcome::default();
        // What a replace killed between its renames moved aside may be
        // another writer's file: it goes back first.
        self.recover_asides()?;
        // Our own copies on the share of entries still in the app
        // directory, to recognise them in a later pass (or run).
        let (mut own, placed) = match self.committed_here() {
            Some(placed) => (true, placed),
            None => (false, HashMap::new()),
        };
        let mut mine = Own {
            placed,
            pruned: Default::default(),
            journal: std::fs::symlink_metadata(&self.pruning).is_err(),
            held_back: HashMap::new(),
        };
        let mut last_kept = Vec::new();
        for pass in 1..=PASSES {
            out.passes = pass;
            let inv = Inventory::scan(app, &self.app_path, &mut signals::check_interrupt)?;
            if pass == 1 {
                preflight(&inv, app_parent, &self.app_path)?;
            }
            self.refuse_case_twins(&inv)?;
            let target = self.target()?;
            // An empty app directory still makes a missing target (with the
            // directory's owner and mode, which the pipeline relies on).
            if inv.is_empty() && !matches!(target, Target::Empty { exists: false }) {
                self.clean_up()?;
                return Ok(out);
            }
            let ledger = match target {
                Target::Empty { exists } => {
                    match self.copy_whole(&inv, app, exists, ctx, &mut out)? {
                        Some(r) => {
                            own = true;
                            r
                        }
                        // The target gained data meanwhile: compare next pass.
                        None => continue,
                    }
                }
                Target::Full(target) => {
                    self.reconcile(&inv, app, &target, own, &mine, ctx, &mut out)?
                }
            };
            mine.before_prune(self, &inv, &ledger, own)?;
            let doomed = ledger.deletable.iter().flatten().count() as u64;
            ctx.progress.start_deleting(doomed);
            // prune checks in every 64 entries removed.
            let pruned = prune::prune(&inv, app, &self.app_path, &ledger.deletable, &mut || {
                ctx.progress.deleted(64);
                ctx.beat()
            })?;
            failpoint::hit("prune.done");
            if pruned.kept.is_empty() {
                self.clean_up()?;
                return Ok(out);
            }
            mine.after_prune(&inv, &ledger, &pruned);
            crate::debug!(
                "pass {pass}: {} changed or appeared during the migration; another pass",
                crate::link::count(pruned.kept.len() as u64, "entry", "entries")
            );
            last_kept = pruned
                .kept
                .iter()
                .filter(|(_, why)| *why != prune::Kept::NotEmpty)
                .map(|&(ix, why)| (inv.rel(ix), why))
                .collect();
            // Let what is being written settle before looking again.
            signals::sleep_interruptible(Duration::from_nanos(SETTLE_NS as u64 * (pass as u64)))?;
        }
        if own {
            self.mark_committed(&mine.placed)?;
        }
        Err(Error::AppBusy(describe_busy(&self.app_path, &last_kept)))
    }

    /// Put back what a replace killed between its two renames left aside
    /// in the staging directory (`replaced.<n>`, its path recorded in
    /// `replaced.<n>.where`): at its path in the target if nothing is
    /// there, else (or when its path is unknown) under
    /// `displaced/<share path>/<stamp>/`, as any conflict. It may be
    /// another writer's file, never something to delete.
    fn recover_asides(&self) -> Result<()> {
        let staging = match self.share_parent.open_dir(&self.staging_name) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(()),
            Err(e) => return Err(Error::io("open", &self.staging_path, e)),
        };
        let listed = staging
            .list()
            .map_err(|e| Error::io("read directory", &self.staging_path, e))?;
        for (aside, _) in listed.iter().filter(|(n, _)| is_aside(n)) {
            let recorded = where_name(aside);
            let rel = staging
                .read_small(&recorded, 64 * 1024)
                .ok()
                .flatten()
                .map(|(b, _)| PathBuf::from(std::ffi::OsString::from_vec(b)))
                .filter(|p| {
                    !p.as_os_str().is_empty()
                        && p.components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                });
            let at = self.staging_path.join(aside);
            let back = match &rel {
                Some(rel) => self.put_aside_back(&staging, aside, rel)?,
                None => false,
            };
            if back {
                crate::warn!(
                    "{} was moved aside by a run stopped while replacing it; it is back in place",
                    self.share_path
                        .join(rel.as_deref().unwrap_or(Path::new("")))
                        .display()
                );
            } else {
                let kept = self.keep_aside(&staging, aside, rel.as_deref())?;
                crate::warn!(
                    "{} was moved aside by a run stopped while replacing it, and its place is taken: kept as {}",
                    rel.as_deref().map_or(at.clone(), |r| self.share_path.join(r)).display(),
                    kept.display()
                );
            }
            match staging.unlink(&recorded) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    return Err(Error::io("remove", &self.staging_path.join(&recorded), e))
                }
                _ => {}
            }
        }
        // Records left without what they name (a run killed after writing
        // one and before moving anything aside, or while writing it).
        for (name, _) in listed.iter().filter(|(n, _)| !is_aside(n)) {
            let stale = name
                .as_encoded_bytes()
                .strip_prefix(copy::ASIDE.as_bytes())
                .is_some_and(|r| r.starts_with(b"."));
            if stale {
                match staging.unlink(name) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                        return Err(Error::io("remove", &self.staging_path.join(name), e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Rename `aside` back to `rel` in the target, never over anything.
    fn put_aside_back(&self, staging: &Dir, aside: &OsStr, rel: &Path) -> Result<bool> {
        let target = match self.share_parent.open_dir(&self.share_name) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(false),
            Err(e) => return Err(Error::io("open", &self.share_path, e)),
        };
        let (parent, name) = split_rel(rel);
        let to = match tree::open_beneath(&target, parent) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(false),
            Err(e) => return Err(Error::io("open", &self.share_path.join(parent), e)),
        };
        match staging.rename_noreplace(aside, &to, name) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EEXIST | libc::ENOTEMPTY | libc::ENOENT | libc::ENOTDIR)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::io("put back", &self.share_path.join(rel), e)),
        }
    }

    /// Move `aside` to `displaced/<share path>/<stamp>/<rel>` (its own
    /// name when `rel` is unknown). Returns where it is.
    fn keep_aside(&self, staging: &Dir, aside: &OsStr, rel: Option<&Path>) -> Result<PathBuf> {
        let base_path = self.cfg.share_root.join(&self.displaced_rel);
        let base =
            tree::make_beneath(&self.share_root, &self.displaced_rel, &self.cfg.share_root)?.dir;
        let stamp = crate::clock::Utc::at(std::time::SystemTime::now()).stamp();
        let mut name = stamp.clone();
        for n in 2.. {
            match base.mkdir(OsStr::new(&name), 0o755) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 100 => {
                    name = format!("{stamp}-{n}");
                }
                Err(e) => return Err(Error::io("create", &base_path.join(&name), e)),
            }
        }
        self.used(&name);
        let rel = rel.map_or_else(|| PathBuf::from(aside), Path::to_path_buf);
        let (parent, file) = split_rel(&rel);
        let stamp_path = base_path.join(&name);
        let stamp_dir = base
            .open_dir(OsStr::new(&name))
            .map_err(|e| Error::io("open", &stamp_path, e))?;
        let to = tree::make_beneath(&stamp_dir, parent, &stamp_path)?.dir;
        staging
            .rename_noreplace(aside, &to, file)
            .map_err(|e| Error::io("keep", &stamp_path.join(&rel), e))?;
        Ok(stamp_path.join(rel))
    }

    /// The app directory is empty: what is left of staging and set-aside
    /// copies in progress is redundant (a run killed after committing, or
    /// whose copies a later run found already there).
    fn clean_up(&self) -> Result<()> {
        self.recover_asides()?;
        copy::discard(&self.share_parent, &self.staging_name)
            .map_err(|e| Error::io("remove", &self.staging_path, e))?;
        let base = match tree::open_beneath(&self.share_root, &self.displaced_rel) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(()),
            Err(e) => {
                return Err(Error::io(
                    "open",
                    &self.cfg.share_root.join(&self.displaced_rel),
                    e,
                ))
            }
        };
        for (name, _) in base.list().unwrap_or_default() {
            if name.as_encoded_bytes().ends_with(b".partial") {
                tree::remove(&base, &name).map_err(|e| {
                    Error::io(
                        "remove",
                        &self.cfg.share_root.join(&self.displaced_rel).join(&name),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Whether this container committed the migration into the current
    /// share target (its marker names the target and the target exists).
    /// When this container committed the migration into the current share
    /// target (its marker names the target and the target exists): our
    /// copies it recorded there.
    fn committed_here(&self) -> Option<Placed> {
        let m = std::fs::read(&self.marker).ok()?;
        let (first, rest) = match m.iter().position(|&b| b == b'\n') {
            Some(i) => (&m[..i], &m[i + 1..]),
            None => (&m[..], &[][..]),
        };
        if first != self.share_path.as_os_str().as_encoded_bytes() {
            return None;
        }
        match self.share_parent.stat_at(&self.share_name) {
            Ok(Some(t)) if t.kind == Kind::Dir => {}
            _ => return None,
        }
        Some(journal::parse_lines(rest))
    }

    /// What the staging journal records as copied by this migration (or by
    /// another replica's, of the same image): app files whose copy the
    /// share target may hold.
    fn copied(&self) -> HashMap<PathBuf, journal::Record> {
        match self.share_parent.open_dir(&self.staging_name) {
            Ok(d) => journal::Journal::load(&d).unwrap_or_default(),
            Err(_) => HashMap::new(),
        }
    }

    fn target(&self) -> Result<Target> {
        match self
            .share_parent
            .stat_at(&self.share_name)
            .map_err(|e| Error::io("inspect", &self.share_path, e))?
        {
            None => Ok(Target::Empty { exists: false }),
            Some(m) if m.kind == Kind::Dir => {
                let d = self
                    .share_parent
                    .open_dir(&self.share_name)
                    .map_err(|e| Error::io("open directory", &self.share_path, e))?;
                if tree::holds_no_files(&d).map_err(|e| Error::io("read", &self.share_path, e))? {
                    Ok(Target::Empty { exists: true })
                } else {
                    Ok(Target::Full(d))
                }
            }
            Some(m) => Err(Error::Unsafe(format!(
                "{} is a {} where the share directory belongs; sharelink leaves it alone. Move it away and re-run",
                self.share_path.display(),
                m.kind
            ))),
        }
    }

    /// The share target is empty: copy the whole tree beside it and commit
    /// it with one rename. `None` when the target gained data meanwhile.
    fn copy_whole(
        &self,
        inv: &Inventory,
        app: &Dir,
        exists: bool,
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
    ) -> Result<Option<Ledger>> {
        let staging = Staging::open(
            self.share_parent.clone(),
            &self.staging_name,
            self.staging_path.clone(),
        )?;
        let totals = Totals::of(inv, &[0]);
        if staging.resumed {
            tracing::info!(
                link = %self.link.app.display(),
                staged = staging.prior_files(),
                "resuming an interrupted copy into the share"
            );
        }
        let mut staging = self.room_for(staging, &totals, &self.share_parent, &self.share_path)?;
        ctx.progress.start(totals.files, totals.bytes);
        let sel = copy::select(inv, &[0]);
        let (staged, stats) = staging.copy(inv, app, &sel, ctx)?;
        ctx.lock.verify()?;
        if exists {
            match tree::remove_empty_dirs(&self.share_parent, &self.share_name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    return self.gained_data(staging);
                }
                Err(e) => return Err(Error::io("remove empty share target", &self.share_path, e)),
            }
        }
        match staging.commit_tree(&self.share_parent, &self.share_name) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                return self.gained_data(staging);
            }
            Err(e) => return Err(Error::io("commit the copy to", &self.share_path, e)),
        }
        failpoint::hit("commit.renamed");
        self.mark_committed(&HashMap::new())?;
        failpoint::hit("commit.marked");
        self.share_parent
            .sync_fs()
            .map_err(|e| Error::io("sync", &self.share_path, e))?;
        failpoint::hit("commit.synced");
        // The tree was renamed away whole: nothing of it to remove
        // (`Staging::close` would only find it gone).
        drop(staging);
        crate::debug!("committed: {} holds the copy", self.share_path.display());
        add(&mut out.copied, &stats);
        Ok(Some(Ledger::from_staged(inv, &staged)))
    }

    fn gained_data(&self, staging: Staging) -> Result<Option<Ledger>> {
        crate::info!(
            "{} gained data while this run copied; comparing instead",
            self.share_path.display()
        );
        // The staged copy is redundant: the app directory is intact.
        staging.remove()?;
        Ok(None)
    }

    /// Record on the app side that this container committed its copy to
    /// the share target, and which of our copies there are of entries the
    /// app directory still holds (to be replaced, not set aside, when a
    /// later run finds those entries changed).
    fn mark_committed(&self, placed: &Placed) -> Result<()> {
        let mut text = self.share_path.as_os_str().as_encoded_bytes().to_vec();
        text.push(b'\n');
        for (rel, rec) in placed {
            journal::encode(&mut text, rel, rec);
        }
        std::fs::write(&self.marker, text).map_err(|e| Error::io("write", &self.marker, e))
    }

    /// The share target holds data: compare entry by entry.
    #[allow(clippy::too_many_arguments)]
    fn reconcile(
        &self,
        inv: &Inventory,
        app: &Dir,
        target: &Dir,
        own: bool,
        mine: &Own,
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
    ) -> Result<Ledger> {
        let copied = self.copied();
        let verdicts = compare::compare(inv, app, target, &self.share_path, &copied, ctx)?;
        let n = inv.entries.len();
        let mut ledger = Ledger::new(n);
        let (mut copy_in, mut set_aside, mut replace) = (Vec::new(), Vec::new(), Vec::new());
        let mut supersede = Vec::new();
        for ix in 1..n as Ix {
            let Some(v) = verdicts[ix as usize] else {
                continue;
            };
            let kind = inv.get(ix).meta.kind;
            // The share's differing file is a copy this migration made and
            // nobody changed since (same inode, size, times), of this very
            // app file (same inode: changed, not deleted and made anew):
            // recorded in the marker by an earlier pass, or in the journal
            // by the copy.
            let ours = match v {
                Verdict::Differs { share: Some(s) } => {
                    let rel = inv.rel(ix);
                    let app_ino = inv.get(ix).meta.id.ino;
                    let journal = copied.get(&rel).filter(|_| mine.journal);
                    !mine.pruned.contains(&rel)
                        && [mine.placed.get(&rel), journal]
                            .into_iter()
                            .flatten()
                            .any(|r| r.copy == s && r.app.ino == app_ino)
                }
                _ => false,
            };
            match step(v, kind, self.link.migrate, own, ours) {
                Step::Drop => {
                    if let (Verdict::Same { app }, true) = (v, kind != Kind::Dir) {
                        ledger.deletable[ix as usize] = Some(app);
                        out.identical += 1;
                    }
                }
                Step::CopyIn => copy_in.push(ix),
                Step::SetAside => set_aside.push(ix),
                Step::Replace => {
                    if let Verdict::Differs { share: Some(s) } = v {
                        replace.push((ix, s));
                    }
                }
                Step::Supersede => supersede.push(ix),
                Step::Wait | Step::Descend => {}
            }
        }
        if !copy_in.is_empty() || !replace.is_empty() {
            self.copy_in(inv, app, target, &copy_in, &replace, ctx, out, &mut ledger)?;
        }
        if !supersede.is_empty() {
            let keep_share = self.supersede(inv, app, target, &supersede, ctx, out, &mut ledger)?;
            set_aside.extend(keep_share);
        }
        if !set_aside.is_empty() {
            self.set_aside(inv, app, &set_aside, ctx, out, &mut ledger.deletable)?;
        }
        Ok(ledger)
    }

    /// Refuse to start a copy the share has no room for, counting what an
    /// interrupted run staged already; a fresh staging is removed again.
    fn room_for(
        &self,
        staging: Staging,
        totals: &Totals,
        dir: &Dir,
        path: &Path,
    ) -> Result<Staging> {
        let need = Totals {
            footprint: totals.footprint.saturating_sub(staging.prior_bytes()),
            entries: totals.entries.saturating_sub(staging.prior_files() as u64),
            ..*totals
        };
        match check_space(dir, path, &self.app_path, &need) {
            Ok(()) => Ok(staging),
            Err(e) => {
                if !staging.resumed {
                    staging.remove()?;
                }
                Err(e)
            }
        }
    }

    /// Copy entries the share lacks into it (and replace our own outdated
    /// copies), through the staging directory: each appears whole.
    #[allow(clippy::too_many_arguments)]
    fn copy_in(
        &self,
        inv: &Inventory,
        app: &Dir,
        target: &Dir,
        copy_in: &[Ix],
        replace: &[(Ix, Identity)],
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
        ledger: &mut Ledger,
    ) -> Result<()> {
        let roots: Vec<Ix> = copy_in
            .iter()
            .copied()
            .chain(replace.iter().map(|&(r, _)| r))
            .collect();
        let staging = Staging::open(
            self.share_parent.clone(),
            &self.staging_name,
            self.staging_path.clone(),
        )?;
        let totals = Totals::of(inv, &roots);
        let mut staging = self.room_for(staging, &totals, &self.share_parent, &self.share_path)?;
        ctx.progress.start(totals.files, totals.bytes);
        let sel = copy::select(inv, &roots);
        let (staged, stats) = staging.copy(inv, app, &sel, ctx)?;
        ctx.lock.verify()?;
        let staged = Ledger::from_staged(inv, &staged);
        let moves: Vec<(Ix, Option<Identity>)> = copy_in
            .iter()
            .map(|&r| (r, None))
            .chain(replace.iter().map(|&(r, was)| (r, Some(was))))
            .collect();
        // What moved is recorded even when a later move failed.
        let (moved, failed) = self.move_all(inv, &moves, &staging, target, ctx);
        for (&(r, was), id) in moves.iter().zip(moved) {
            let Some(id) = id else { continue };
            if was.is_none() {
                for i in inv.subtree(r) {
                    ledger.deletable[i as usize] = staged.deletable[i as usize];
                    ledger.copies[i as usize] = staged.copies[i as usize];
                }
            } else {
                ledger.deletable[r as usize] = staged.deletable[r as usize];
                out.replaced += 1;
            }
            ledger.copies[r as usize] = id;
        }
        failed?;
        target
            .sync_fs()
            .map_err(|e| Error::io("sync", &self.share_path, e))?;
        staging.close()?;
        add(&mut out.copied, &stats);
        Ok(())
    }

    /// [`Self::move_in`] for each of `moves` (a root and what it replaces),
    /// on the pool in lanes by directory: a run of entries per job, its
    /// parent opened once on each side. Every rename first waits until the
    /// lock was confirmed within [`FRESH_FOR`] ([`Fresh::wait`]); a lost
    /// lock stops every lane before its next rename, so a run frozen past
    /// its lease does not go on renaming into a target another holder now
    /// works on. Returns what moved (recorded even when a later move
    /// failed) and how it ended.
    fn move_all(
        &self,
        inv: &Inventory,
        moves: &[(Ix, Option<Identity>)],
        staging: &Staging,
        target: &Dir,
        ctx: &mut Ctx<'_>,
    ) -> (Vec<Option<Option<Identity>>>, Result<()>) {
        let done: Vec<Mutex<Option<Option<Identity>>>> =
            moves.iter().map(|_| Mutex::new(None)).collect();
        let mut by_dir: std::collections::BTreeMap<Ix, Vec<usize>> = Default::default();
        for (k, &(r, _)) in moves.iter().enumerate() {
            by_dir.entry(inv.get(r).parent).or_default().push(k);
        }
        // A few runs per directory, so that one run's stat of what it
        // moved overlaps the next run's rename.
        let jobs: Vec<(pool::Lane, Vec<usize>)> = by_dir
            .into_iter()
            .flat_map(|(dir, ks)| {
                let per = ks.len().div_ceil(4).max(16);
                ks.chunks(per)
                    .map(|c| (dir, c.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let Ctx {
            threads,
            lock,
            progress,
            fresh,
            ..
        } = ctx;
        let fresh: &Fresh = fresh;
        let mut beat = || heartbeat(lock, fresh, progress);
        let r = pool::run_lanes(
            *threads,
            jobs,
            &|ks: Vec<usize>, _: &pool::Queue<Vec<usize>>| {
                let Some(&first) = ks.first() else {
                    return Ok(());
                };
                fresh.wait()?;
                let (from, to) = self.parents(inv, moves[first].0, staging, target)?;
                for k in ks {
                    fresh.wait()?;
                    let (r, was) = &moves[k];
                    let id = self.move_in(inv, *r, (&from, &to), staging, was.as_ref())?;
                    *done[k].lock().unwrap_or_else(|p| p.into_inner()) = id;
                }
                Ok(())
            },
            &mut beat,
        );
        let moved = done
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
        (moved, r)
    }

    /// [`Self::move_in`] for one root, opening its parent on each side.
    fn move_root(
        &self,
        inv: &Inventory,
        r: Ix,
        staging: &Staging,
        target: &Dir,
        expect: Option<&Identity>,
    ) -> Result<Option<Option<Identity>>> {
        let (from, to) = self.parents(inv, r, staging, target)?;
        self.move_in(inv, r, (&from, &to), staging, expect)
    }

    /// The parent directory of root `r` in the staging tree and in the
    /// target.
    fn parents(
        &self,
        inv: &Inventory,
        r: Ix,
        staging: &Staging,
        target: &Dir,
    ) -> Result<(Dir, Dir)> {
        let rel = inv.rel(r);
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let from = tree::open_beneath(&staging.tree, parent_rel)
            .map_err(|e| Error::io("open", &staging.path.join(copy::TREE).join(parent_rel), e))?;
        let to = tree::open_beneath(target, parent_rel)
            .map_err(|e| Error::io("open", &self.share_path.join(parent_rel), e))?;
        Ok((from, to))
    }

    /// Move root `r` from the staging tree into the target (`from` and
    /// `to`: its parent directory on each side). `expect`:
    /// replace what is there, if it still is that (our own older copy).
    /// Returns the moved entry's identity on the share (a rename may move
    /// its ctime), or `None` when it did not move.
    fn move_in(
        &self,
        inv: &Inventory,
        r: Ix,
        (from, to): (&Dir, &Dir),
        staging: &Staging,
        expect: Option<&Identity>,
    ) -> Result<Option<Option<Identity>>> {
        let name = &inv.get(r).name;
        let moved = match expect {
            Some(id) => {
                match replace_checked(from, to, (name, &inv.rel(r)), staging, &aside_name(r), id) {
                    Ok(true) => Ok(()),
                    Ok(false) => return Ok(None),
                    Err(e) => Err(e),
                }
            }
            None => from.rename_noreplace(name, to, name),
        };
        match moved {
            Ok(()) => {
                failpoint::hit("merge.moved");
                let now = to.stat_at(name).ok().flatten();
                Ok(Some(now.filter(|m| m.kind == Kind::File).map(|m| m.id)))
            }
            // It appeared on the share meanwhile: compared next pass.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EEXIST | libc::ENOTEMPTY | libc::ENOENT)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io(
                "move into the share",
                &self.share_path.join(inv.rel(r)),
                e,
            )),
        }
    }

    /// `image-wins`: put the app's version of each root in place of the
    /// share's differing entry. Order, so that every version exists whole
    /// somewhere the next run finishes from at every instant:
    ///
    /// 1. the app's versions are staged beside the target (resumable; the
    ///    long part, done first so that little happens between 2 and 3);
    /// 2. the share's versions are copied to `displaced/<stamp>/`, synced;
    /// 3. each share entry that is still the version kept is replaced by
    ///    a rename of the staged one.
    ///
    /// A crash before 3 leaves the share's version in place (and a copy of
    /// it kept: the next run keeps another, it never drops one); after 3
    /// the share holds the app's version, which the next run finds
    /// identical. Only a faithful copy of the app entry goes in: a torn one
    /// would differ from the app next run and be set aside as if it were
    /// the share's own data. Returns the roots whose share entry is a
    /// directory: those are set aside instead ([`Swap::KeepShare`]).
    #[allow(clippy::too_many_arguments)]
    fn supersede(
        &self,
        inv: &Inventory,
        app: &Dir,
        target: &Dir,
        roots: &[Ix],
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
        ledger: &mut Ledger,
    ) -> Result<Vec<Ix>> {
        let rels: Vec<PathBuf> = roots.iter().map(|&r| inv.rel(r)).collect();
        let (share_inv, found) = Inventory::of_paths(target, &self.share_path, &rels)?;
        let mut keep_share = Vec::new();
        let mut todo = Vec::new();
        for (&r, s) in roots.iter().zip(found) {
            // Gone from the share meanwhile: compared again next pass.
            let Some(s) = s else { continue };
            match swap(inv.get(r).meta.kind, share_inv.get(s).meta.kind) {
                Swap::KeepShare => keep_share.push(r),
                how => todo.push((r, s, how)),
            }
        }
        // A share entry being written now is looked at again next pass,
        // rather than kept in a copy that could not vouch for it.
        todo.retain(|&(_, s, _)| {
            let e = share_inv.get(s);
            e.meta.settled(e.seen, SETTLE_NS)
        });
        if todo.is_empty() {
            return Ok(keep_share);
        }
        // 1. The app's versions, staged.
        let app_roots: Vec<Ix> = todo.iter().map(|t| t.0).collect();
        let staging = Staging::open(
            self.share_parent.clone(),
            &self.staging_name,
            self.staging_path.clone(),
        )?;
        let totals = Totals::of(inv, &app_roots);
        let mut staging = self.room_for(staging, &totals, &self.share_parent, &self.share_path)?;
        ctx.progress.start(totals.files, totals.bytes);
        let (staged, stats) = staging.copy(inv, app, &copy::select(inv, &app_roots), ctx)?;
        let whole = |r: Ix| {
            inv.subtree(r).into_iter().all(|i| {
                let e = inv.get(i);
                !e.changed
                    && (e.meta.kind == Kind::Dir || staged[i as usize].is_some_and(|s| s.faithful))
            })
        };
        todo.retain(|&(r, _, _)| whole(r));
        // 2. The share's versions, kept.
        let share_roots: Vec<Ix> = todo.iter().map(|t| t.1).collect();
        let kept = self.keep_share_versions(&share_inv, target, &share_roots, ctx, out)?;
        ctx.lock.verify()?;
        // 3. The swaps.
        let staged_l = Ledger::from_staged(inv, &staged);
        let mut n = 0;
        for (r, s, how) in todo {
            let Some(was) = kept[s as usize] else {
                continue;
            };
            if let Some(id) = self.swap_in(inv, r, &staging, target, &was, how)? {
                for i in inv.subtree(r) {
                    ledger.deletable[i as usize] = staged_l.deletable[i as usize];
                    ledger.copies[i as usize] = staged_l.copies[i as usize];
                }
                ledger.copies[r as usize] = id;
                n += 1;
                failpoint::hit("supersede.replaced");
            }
        }
        target
            .sync_fs()
            .map_err(|e| Error::io("sync", &self.share_path, e))?;
        staging.close()?;
        add(&mut out.copied, &stats);
        out.superseded += n;
        if n > 0 {
            tracing::warn!(
                link = %self.link.app.display(),
                entries = n,
                kept = %out.displaced_to.as_deref().unwrap_or(Path::new("")).display(),
                "migrate = \"image-wins\": share entries that differed from the image's were replaced by the image's version; the share's versions are kept"
            );
        }
        Ok(keep_share)
    }

    /// Keep the share's entries `roots` (non-directories, in `share_inv`)
    /// under `displaced/<share path>/<stamp>/`, complete and synced. Per
    /// share entry: the identity the kept copy is of (the entry may be
    /// replaced only while it still has it); `None` when it was changing.
    ///
    /// Never matched against older set-aside copies: one found there could
    /// be removed by `keep` long before this version's own stamp would be.
    fn keep_share_versions(
        &self,
        share_inv: &Inventory,
        target: &Dir,
        roots: &[Ix],
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
    ) -> Result<Vec<Option<Identity>>> {
        let mut kept = vec![None; share_inv.entries.len()];
        if roots.is_empty() {
            return Ok(kept);
        }
        let base_path = self.cfg.share_root.join(&self.displaced_rel);
        let base = Arc::new(
            tree::make_beneath(&self.share_root, &self.displaced_rel, &self.cfg.share_root)?.dir,
        );
        let SetAside { partial, .. } =
            SetAside::find(&base, true).map_err(|e| Error::io("read directory", &base_path, e))?;
        let (_, under) = leaves_under(share_inv, roots);
        let sel = select_leaves(share_inv, roots, &under);
        let stamp =
            partial.unwrap_or_else(|| crate::clock::Utc::at(std::time::SystemTime::now()).stamp());
        let staging = Staging::open(
            base.clone(),
            &OsString::from(format!("{stamp}.partial")),
            base_path.join(format!("{stamp}.partial")),
        )?;
        base.open_dir(OsStr::new(&format!("{stamp}.partial")))
            .and_then(|d| d.create(OsStr::new(SHARE_SIDE), 0o600).map(drop))
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EEXIST) => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| Error::io("mark", &base_path.join(format!("{stamp}.partial")), e))?;
        let totals = Totals::of(share_inv, roots);
        let mut staging = self.room_for(staging, &totals, &base, &base_path)?;
        ctx.progress.start(totals.files, totals.bytes);
        // The copy's messages name the share's entries.
        let app_path = std::mem::replace(&mut ctx.app_path, self.share_path.clone());
        let copied = staging.copy(share_inv, target, &sel, ctx);
        ctx.app_path = app_path;
        let (staged, stats) = copied?;
        ctx.lock.verify()?;
        let name = commit_stamped(&staging, &base, &base_path, &stamp)?;
        failpoint::hit("displace.renamed");
        base.sync_fs()
            .map_err(|e| Error::io("sync", &base_path, e))?;
        failpoint::hit("supersede.kept");
        staging.remove()?;
        self.used(&name);
        for &s in roots {
            kept[s as usize] = staged[s as usize].filter(|st| st.faithful).map(|st| st.app);
        }
        add(&mut out.displaced, &stats);
        out.displaced_to = Some(base_path.join(&name));
        Ok(kept)
    }

    /// Replace the share's entry at root `r` with the staged one, if the
    /// share's entry is still `was` (the version kept). Returns the new
    /// entry's identity on the share (regular files), or `None` when
    /// nothing moved.
    fn swap_in(
        &self,
        inv: &Inventory,
        r: Ix,
        staging: &Staging,
        target: &Dir,
        was: &Identity,
        how: Swap,
    ) -> Result<Option<Option<Identity>>> {
        match how {
            Swap::RenameOver => self.move_root(inv, r, staging, target, Some(was)),
            Swap::RemoveThenRename => {
                let rel = inv.rel(r);
                let to = tree::open_beneath(target, rel.parent().unwrap_or(Path::new("")))
                    .map_err(|e| Error::io("open", &self.share_path.join(&rel), e))?;
                let name = &inv.get(r).name;
                match to.stat_at(name) {
                    Ok(Some(m)) if m.id == *was && m.kind != Kind::Dir => {}
                    _ => return Ok(None),
                }
                match to.unlink(name) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(Error::io("remove", &self.share_path.join(&rel), e)),
                }
                // A crash here leaves the share without the entry: the
                // next run copies it in ("only the app has it").
                self.move_root(inv, r, staging, target, None)
            }
            Swap::KeepShare => Ok(None),
        }
    }

    /// After a successful migration, under the lock: remove the set-aside
    /// copies `keep` lets go. A copy is first renamed to `<stamp>.expired`,
    /// so that a half-removed one (a crash) never serves as a kept copy;
    /// leftovers of that kind go too. `.partial` copies are never touched.
    /// Everything is done through directory descriptors without following
    /// symlinks (the share may hold anything). Returns how many went.
    fn retain(&self, keep: crate::config::Keep, ctx: &mut Ctx<'_>) -> Result<u64> {
        let base_path = self.cfg.share_root.join(&self.displaced_rel);
        let base = match tree::open_beneath(&self.share_root, &self.displaced_rel) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(0),
            Err(e) => return Err(Error::io("open", &base_path, e)),
        };
        let listing = base
            .list()
            .map_err(|e| Error::io("read directory", &base_path, e))?;
        let mut stamps = Vec::new();
        let mut leftovers = Vec::new();
        for (name, _) in listing {
            let Some(n) = name.to_str() else { continue };
            let is_dir = matches!(base.stat_at(&name), Ok(Some(m)) if m.kind == Kind::Dir);
            if !is_dir {
                continue;
            }
            if let Some(stamp) = n.strip_suffix(EXPIRED) {
                if crate::clock::Utc::parse_stamp(stamp).is_some() {
                    leftovers.push(n.to_string());
                }
            } else if let Some(t) = crate::clock::Utc::parse_stamp(n) {
                stamps.push((n.to_string(), t));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let doomed = expired(keep, &stamps, now, &used);
        if doomed.is_empty() && leftovers.is_empty() {
            return Ok(0);
        }
        ctx.lock.verify()?;
        for name in &doomed {
            let to = format!("{name}{EXPIRED}");
            base.rename_noreplace(OsStr::new(name), &base, OsStr::new(&to))
                .map_err(|e| {
                    Error::io("rename expired set-aside copy", &base_path.join(name), e)
                })?;
            leftovers.push(to);
        }
        for name in &leftovers {
            tree::remove(&base, OsStr::new(name))
                .map_err(|e| Error::io("remove", &base_path.join(name), e))?;
            failpoint::hit("keep.removed");
            ctx.beat()?;
        }
        if !doomed.is_empty() {
            tracing::info!(
                link = %self.link.app.display(),
                removed = doomed.len(),
                keep = %keep,
                "removed set-aside copies in {} that keep lets go",
                base_path.display()
            );
        }
        Ok(doomed.len() as u64)
    }

    /// Remember that `stamp` holds something this migration relies on:
    /// `keep` never removes it in the same run.
    fn used(&self, stamp: &str) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stamp.to_string());
    }

    /// Keep app entries the share must not take under
    /// `.sharelink/displaced/<share path>/<UTC stamp>/`, unless a byte-identical
    /// copy is there already from an earlier run.
    fn set_aside(
        &self,
        inv: &Inventory,
        app: &Dir,
        roots: &[Ix],
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
        doomed: &mut [Option<Identity>],
    ) -> Result<()> {
        let base_path = self.cfg.share_root.join(&self.displaced_rel);
        let base = Arc::new(
            tree::make_beneath(&self.share_root, &self.displaced_rel, &self.cfg.share_root)?.dir,
        );
        let SetAside { stamps, partial } =
            SetAside::find(&base, false).map_err(|e| Error::io("read directory", &base_path, e))?;
        let (leaves, under) = leaves_under(inv, roots);
        let kept = self.already_kept(inv, app, &stamps, &leaves, ctx)?;
        let mut todo = Vec::new();
        for &l in &leaves {
            match kept[l as usize] {
                Some(Verdict::Same { app: id }) => {
                    if inv.get(l).meta.kind != Kind::Dir {
                        doomed[l as usize] = Some(id);
                        out.already_displaced += 1;
                    }
                }
                None => todo.push(l),
                // Kept already, but changing: looked at again next pass.
                Some(_) => {}
            }
        }
        if todo.is_empty() {
            if out.already_displaced > 0 {
                out.displaced_to = stamps.first().map(|st| base_path.join(&st.name));
            }
            return Ok(());
        }
        let sel = select_leaves(inv, &todo, &under);
        let stamp =
            partial.unwrap_or_else(|| crate::clock::Utc::at(std::time::SystemTime::now()).stamp());
        let staging = Staging::open(
            base.clone(),
            &OsString::from(format!("{stamp}.partial")),
            base_path.join(format!("{stamp}.partial")),
        )?;
        let files = todo
            .iter()
            .filter(|&&l| inv.get(l).meta.kind == Kind::File)
            .count() as u64;
        let bytes = todo.iter().map(|&l| inv.get(l).meta.id.size).sum();
        let totals = Totals::of(inv, &todo);
        let mut staging = self.room_for(staging, &totals, &base, &base_path)?;
        ctx.progress.start(files, bytes);
        let (staged, stats) = staging.copy(inv, app, &sel, ctx)?;
        ctx.lock.verify()?;
        let name = commit_stamped(&staging, &base, &base_path, &stamp)?;
        failpoint::hit("displace.renamed");
        base.sync_fs()
            .map_err(|e| Error::io("sync", &base_path, e))?;
        staging.remove()?;
        self.used(&name);
        let staged = Ledger::from_staged(inv, &staged);
        let mut count = 0;
        for &l in &todo {
            if let Some(id) = staged.deletable[l as usize] {
                doomed[l as usize] = Some(id);
                count += 1;
            }
        }
        add(&mut out.displaced, &stats);
        out.displaced_to = Some(base_path.join(&name));
        tracing::warn!(
            link = %self.link.app.display(),
            entries = count,
            to = %base_path.join(&name).display(),
            "app entries that differ from the share's (or that the share lacks, with migrate = \"if-empty\") were set aside, not merged; \
             if the pipeline replaced this link's symlink with a directory and wrote there, its writes are among them: copy back what you need from there"
        );
        Ok(())
    }

    /// For each leaf, the app identity if a complete earlier set-aside copy
    /// holds it byte for byte.
    fn already_kept(
        &self,
        inv: &Inventory,
        app: &Dir,
        stamps: &[Stamp],
        leaves: &[Ix],
        ctx: &mut Ctx<'_>,
    ) -> Result<Vec<Option<Verdict>>> {
        let found: Vec<Mutex<Option<Verdict>>> =
            (0..inv.entries.len()).map(|_| Mutex::new(None)).collect();
        if stamps.is_empty() || leaves.is_empty() {
            return Ok(found.into_iter().map(|_| None).collect());
        }
        let threads = ctx.threads;
        let mut beat = || ctx.beat();
        let app_path = &self.app_path;
        pool::run(
            threads,
            leaves.to_vec(),
            &|ix: Ix, q: &pool::Queue<Ix>| {
                for st in stamps {
                    match compare::already_kept(inv, ix, app, &st.dir, &q.stop) {
                        Ok(Some(id)) => {
                            self.used(&st.name);
                            *found[ix as usize].lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(id);
                            return Ok(());
                        }
                        Ok(None) => {}
                        Err(e) => {
                            return Err(Error::io(
                                "compare with set-aside copies",
                                &inv.path(app_path, ix),
                                e,
                            ))
                        }
                    }
                }
                Ok(())
            },
            &mut beat,
        )?;
        Ok(found
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect())
    }
}

/// The leaves of the subtrees under `roots` (non-directories and empty
/// directories), and which entries are in those subtrees.
fn leaves_under(inv: &Inventory, roots: &[Ix]) -> (Vec<Ix>, Vec<bool>) {
    let mut leaves = Vec::new();
    let mut under = vec![false; inv.entries.len()];
    for &r in roots {
        for i in inv.subtree(r) {
            under[i as usize] = true;
            let e = inv.get(i);
            if e.meta.kind != Kind::Dir || e.children.is_empty() {
                leaves.push(i);
            }
        }
    }
    (leaves, under)
}

/// What to copy: `leaves`, and the directories on the way (copied with
/// their attributes inside the kept subtrees, `under`; plain elsewhere).
fn select_leaves(inv: &Inventory, leaves: &[Ix], under: &[bool]) -> Vec<Sel> {
    let mut sel = vec![Sel::Skip; inv.entries.len()];
    for &l in leaves {
        sel[l as usize] = Sel::Copy;
        let mut p = l;
        while p != 0 {
            p = inv.get(p).parent;
            let s = if under[p as usize] {
                Sel::Copy
            } else {
                Sel::Path
            };
            if sel[p as usize] == Sel::Skip {
                sel[p as usize] = s;
            }
        }
    }
    sel
}

/// Rename the staged set-aside copy to `stamp` in `base`, or `stamp-2`,
/// `stamp-3`... when that is taken (two runs in the same second). Returns
/// the name.
fn commit_stamped(staging: &Staging, base: &Dir, base_path: &Path, stamp: &str) -> Result<String> {
    let mut name = stamp.to_string();
    for n in 2.. {
        match staging.commit_tree(base, OsStr::new(&name)) {
            Ok(()) => break,
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) && n < 100 =>
            {
                name = format!("{stamp}-{n}");
            }
            Err(e) => {
                return Err(Error::io(
                    "rename set-aside copy to",
                    &base_path.join(&name),
                    e,
                ))
            }
        }
    }
    Ok(name)
}

/// In an interrupted set-aside copy (`<stamp>.partial/`): it is of the
/// share's versions, not of app entries.
const SHARE_SIDE: &str = "share-side";

/// The suffix of a set-aside copy `keep` let go, while it is removed.
const EXPIRED: &str = ".expired";

/// One complete set-aside copy under `displaced/<share path>/`.
struct Stamp {
    name: String,
    dir: Dir,
}

/// What `displaced/<share path>/` holds.
struct SetAside {
    /// Complete copies, newest first.
    stamps: Vec<Stamp>,
    /// The stamp of an interrupted copy to resume (older interrupted ones
    /// are removed: each was a copy of an app directory that is intact).
    partial: Option<String>,
}

impl SetAside {
    /// `share_side`: the copy to resume is one of the share's versions
    /// (`image-wins`), else one of app entries. An interrupted copy of the
    /// other side is removed rather than resumed (every interrupted copy is
    /// of entries still in place): resuming it with another selection would
    /// commit what it left (a file cut short by the crash) with this one.
    fn find(base: &Dir, share_side: bool) -> std::io::Result<SetAside> {
        let mut stamps = Vec::new();
        let mut partials = Vec::new();
        for (name, kind) in base.list()? {
            let Some(n) = name.to_str() else { continue };
            if let Some(stamp) = n.strip_suffix(".partial") {
                let of_share = base
                    .open_dir(&name)
                    .and_then(|d| d.stat_at(OsStr::new(SHARE_SIDE)))
                    .is_ok_and(|m| m.is_some());
                if of_share == share_side {
                    partials.push(stamp.to_string());
                } else {
                    tree::remove(base, &name)?;
                }
            } else if n.ends_with(EXPIRED) {
                // Being removed: never a kept copy again.
            } else if kind.is_none_or(|k| k == Kind::Dir) {
                if let Ok(dir) = base.open_dir(&name) {
                    stamps.push(Stamp {
                        name: n.to_string(),
                        dir,
                    });
                }
            }
        }
        stamps.sort_unstable_by_key(|st| std::cmp::Reverse(stamp_key(&st.name)));
        partials.sort_unstable();
        let partial = partials.pop();
        for p in partials {
            tree::remove(base, OsStr::new(&format!("{p}.partial")))?;
        }
        Ok(SetAside { stamps, partial })
    }
}

/// `20261126T224501Z-3` sorts after `20261126T224501Z-2` and `…Z`.
fn stamp_key(name: &str) -> (String, u32) {
    match name.split_once('-') {
        Some((s, n)) => (s.to_string(), n.parse().unwrap_or(0)),
        None => (name.to_string(), 1),
    }
}

fn add(a: &mut copy::Stats, b: &copy::Stats) {
    a.files += b.files;
    a.bytes += b.bytes;
    a.resumed += b.resumed;
    a.resumed_bytes += b.resumed_bytes;
    a.symlinks += b.symlinks;
    a.dirs += b.dirs;
    a.special += b.special;
    a.hard_links += b.hard_links;
}

fn describe_busy(app: &Path, kept: &[(PathBuf, prune::Kept)]) -> String {
    let busy = kept.iter().filter(|(_, w)| *w == prune::Kept::Busy).count();
    let shown: Vec<String> = kept
        .iter()
        .take(5)
        .map(|(p, why)| {
            format!(
                "{}{}",
                p.display(),
                match why {
                    prune::Kept::Busy => " (open for writing)",
                    _ => "",
                }
            )
        })
        .collect();
    let more = kept.len().saturating_sub(shown.len());
    format!(
        "{} kept changing while it was moved into the share: {} entr{} still changed or appeared in the last pass{} ({}{}). Everything copied so far is in the share; the rest stays in {}. Stop what writes there (or let it finish) and re-run `sharelink link`",
        app.display(),
        kept.len(),
        if kept.len() == 1 { "y" } else { "ies" },
        if busy > 0 { format!(", {busy} held open for writing by another process") } else { String::new() },
        shown.join(", "),
        if more > 0 { format!(", and {more} more") } else { String::new() },
        app.display()
    )
}

impl Migration<'_> {
    /// Names that differ only in case would become one file on a share
    /// that ignores case (SMB): refuse before copying, naming them. The
    /// share is asked only when the app directory holds such names.
    fn refuse_case_twins(&self, inv: &Inventory) -> Result<()> {
        let twins = inv.case_twins();
        if twins.is_empty() || !self.share_ignores_case()? {
            return Ok(());
        }
        let shown: Vec<String> = twins
            .iter()
            .take(5)
            .map(|&(a, b)| {
                format!(
                    "{} and {}",
                    inv.path(&self.app_path, a).display(),
                    inv.path(&self.app_path, b).display()
                )
            })
            .collect();
        Err(Error::Unsafe(format!(
            "{}{} differ only in case, and the share at {} does not tell such names apart: both would end up as one file. Nothing was copied; rename one of each pair (in the image or the container) and re-run",
            shown.join("; "),
            if twins.len() > 5 {
                format!("; and {} more pairs", twins.len() - 5)
            } else {
                String::new()
            },
            self.cfg.share_root.display()
        )))
    }

    /// Whether the share takes a name for the same name in another case,
    /// where copies go: beside the share target (its staging) and under
    /// `.sharelink/` (set-aside copies), which may be different mounts.
    fn share_ignores_case(&self) -> Result<bool> {
        let own = Path::new(RESERVED_DIR);
        let reserved = tree::open_beneath(&self.share_root, own)
            .map_err(|e| Error::io("open", &self.cfg.share_root.join(own), e))?;
        let parent_path = self.share_path.parent().unwrap_or(Path::new("/"));
        Ok(ignores_case(&self.share_parent, parent_path)?
            || ignores_case(&reserved, &self.cfg.share_root.join(own))?)
    }
}

/// Make a hidden probe file in `dir` and look it up lower-cased.
fn ignores_case(dir: &Dir, dir_path: &Path) -> Result<bool> {
    // Unique among replicas, which are all PID 1.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(".Sharelink-Case-Probe.{}.{nanos}", std::process::id());
    let probe = OsStr::new(&name);
    let path = dir_path.join(probe);
    dir.create(probe, 0o600)
        .map_err(|e| Error::io("create", &path, e))?;
    let found = dir.stat_at(OsStr::new(&name.to_lowercase()));
    let _ = dir.unlink(probe);
    Ok(found.map_err(|e| Error::io("inspect", &path, e))?.is_some())
}

/// Before anything is copied: would the end of the migration fail? The app
/// directory must be emptied and replaced with a symlink, so its parent and
/// every directory in it must be writable by us, and its files readable.
/// Failing after a full copy would fail again on every start.
fn preflight(inv: &Inventory, app_parent: &Dir, app_path: &Path) -> Result<()> {
    let parent_path = app_path.parent().unwrap_or(Path::new("/"));
    let mut blockers: Vec<(PathBuf, &std::io::Error)> = Vec::new();
    let parent_err = app_parent
        .access(OsStr::new("."), libc::W_OK | libc::X_OK)
        .err();
    if let Some(e) = &parent_err {
        if e.raw_os_error() == Some(libc::EROFS) {
            return Err(Error::ReadOnlyApp(format!(
                "{} is on a read-only filesystem: sharelink must replace {} with a symlink (run the container with a writable root, or make the data directory a symlink at build time)",
                parent_path.display(),
                app_path.display()
            )));
        }
        blockers.push((parent_path.to_path_buf(), e));
    }
    for (ix, e) in &inv.blockers {
        blockers.push((inv.path(app_path, *ix), e));
    }
    // A sticky directory lets only an entry's owner (or the directory's)
    // remove it; `access` does not say so.
    let euid = nix::unistd::geteuid().as_raw();
    let sticky = std::io::Error::from_raw_os_error(libc::EPERM);
    if euid != 0 {
        for (i, e) in inv.entries.iter().enumerate().skip(1) {
            let parent = &inv.get(e.parent).meta;
            if parent.perm & libc::S_ISVTX != 0 && parent.uid != euid && e.meta.uid != euid {
                blockers.push((inv.path(app_path, i as Ix), &sticky));
            }
        }
    }
    if blockers.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = blockers
        .iter()
        .take(5)
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    Err(Error::CannotEmpty(format!(
        "sharelink (uid {euid}) could not empty {} and replace it with a symlink, so it copied nothing: {}{}. Make the data directory writable (and its files readable) by uid {euid}, e.g. with chown in the Dockerfile, or start sharelink as root and drop privileges with `run --user`",
        app_path.display(),
        shown.join("; "),
        if blockers.len() > 5 {
            format!("; and {} more", blockers.len() - 5)
        } else {
            String::new()
        }
    )))
}

/// Refuse to start a copy the share has no room for (it would fail part-way
/// and fill the share for everyone): bytes and inodes. Shares that report
/// no size or no inode count pass that check.
fn check_space(share: &Dir, share_path: &Path, app_path: &Path, need: &Totals) -> Result<()> {
    let Ok(v) = nix::sys::statvfs::fstatvfs(share) else {
        return Ok(());
    };
    let free = v.blocks_available().saturating_mul(v.fragment_size());
    let short = if v.blocks() > 0 && need.footprint > free {
        Some(format!(
            "{} free; moving {} into it needs about {}",
            progress::human(free),
            app_path.display(),
            progress::human(need.footprint)
        ))
    } else if v.files() > 0 && need.entries > v.files_available() {
        Some(format!(
            "room for {} more files; moving {} into it needs {}",
            v.files_available(),
            app_path.display(),
            need.entries
        ))
    } else {
        None
    };
    match short {
        None => Ok(()),
        Some(why) => Err(Error::NoSpace(format!(
            "the share at {} has {why}. Nothing was copied. Grow the share (or free space), then restart",
            share_path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_rules() {
        use MigrateMode::*;
        let same = Verdict::Same {
            app: Identity {
                ino: 1,
                size: 1,
                mtime: crate::fs::meta::Time { sec: 0, nsec: 0 },
                ctime: crate::fs::meta::Time { sec: 0, nsec: 0 },
            },
        };
        let differs = Verdict::Differs { share: None };
        let f = Kind::File;
        // Identical content goes, in every mode.
        for mode in [IfEmpty, Merge] {
            assert_eq!(step(same, f, mode, false, false), Step::Drop);
            // Different content is never dropped and never overwrites.
            assert_eq!(step(differs, f, mode, false, false), Step::SetAside);
            assert_eq!(step(differs, f, mode, true, false), Step::SetAside);
            assert_eq!(step(Verdict::Unsettled, f, mode, true, true), Step::Wait);
            assert_eq!(step(Verdict::Changed, f, mode, false, false), Step::Wait);
        }
        // What the share lacks: merged in `merge`, set aside in `if-empty`,
        // copied in when it arrived late in our own migration.
        assert_eq!(step(Verdict::AppOnly, f, Merge, false, false), Step::CopyIn);
        assert_eq!(
            step(Verdict::AppOnly, f, IfEmpty, false, false),
            Step::SetAside
        );
        assert_eq!(
            step(Verdict::AppOnly, f, IfEmpty, true, false),
            Step::CopyIn
        );
        // Our own outdated copy is replaced; anyone else's is not.
        assert_eq!(step(differs, f, IfEmpty, true, true), Step::Replace);
        assert_eq!(
            step(differs, Kind::Dir, IfEmpty, true, true),
            Step::SetAside
        );
        assert_eq!(
            step(Verdict::BothDirs, Kind::Dir, IfEmpty, false, false),
            Step::Descend
        );
    }

    #[test]
    fn image_wins_rules() {
        use MigrateMode::ImageWins;
        let same = Verdict::Same {
            app: Identity {
                ino: 1,
                size: 1,
                mtime: crate::fs::meta::Time { sec: 0, nsec: 0 },
                ctime: crate::fs::meta::Time { sec: 0, nsec: 0 },
            },
        };
        let differs = Verdict::Differs { share: None };
        let (f, d) = (Kind::File, Kind::Dir);
        // (verdict, app kind, own, ours) -> step
        for (v, kind, own, ours, want) in [
            (same, f, false, false, Step::Drop),
            (Verdict::AppOnly, f, false, false, Step::CopyIn),
            (Verdict::AppOnly, d, false, false, Step::CopyIn),
            // The share's version differs: kept, then replaced.
            (differs, f, false, false, Step::Supersede),
            (differs, d, false, false, Step::Supersede),
            (differs, Kind::Symlink, true, false, Step::Supersede),
            // Our own copy of an older version of this app file is not
            // the share's data: replaced without keeping it.
            (differs, f, true, true, Step::Replace),
            // A journal that vouches without our commit is not enough.
            (differs, f, false, true, Step::Supersede),
            (Verdict::Unsettled, f, false, false, Step::Wait),
            (Verdict::Changed, f, true, true, Step::Wait),
            (Verdict::BothDirs, d, false, false, Step::Descend),
        ] {
            assert_eq!(
                step(v, kind, ImageWins, own, ours),
                want,
                "{v:?} {kind} {own} {ours}"
            );
        }
        // The other modes never replace the share's data.
        for mode in [MigrateMode::IfEmpty, MigrateMode::Merge] {
            for own in [false, true] {
                assert_ne!(step(differs, f, mode, own, false), Step::Supersede);
            }
        }
        assert_eq!(swap(f, f), Swap::RenameOver);
        assert_eq!(swap(Kind::Symlink, f), Swap::RenameOver);
        assert_eq!(swap(f, Kind::Symlink), Swap::RenameOver);
        assert_eq!(swap(d, f), Swap::RemoveThenRename);
        assert_eq!(swap(d, Kind::Symlink), Swap::RemoveThenRename);
        assert_eq!(swap(f, d), Swap::KeepShare);
    }

    #[test]
    fn keep_removes_only_old_stamps_never_used_ones() {
        use crate::config::Keep;
        use std::collections::BTreeSet;
        let day = 86400;
        let now = 100 * day;
        let stamps: Vec<(String, u64)> = [99, 60, 90, 10, 70]
            .iter()
            .map(|&d| {
                let t = d * day;
                let at = std::time::UNIX_EPOCH + Duration::from_secs(t);
                (crate::clock::Utc::at(at).stamp(), t)
            })
            .collect();
        let name = |t: u64| stamps.iter().find(|s| s.1 == t).unwrap().0.clone();
        let none = BTreeSet::new();
        let mut got = expired(Keep::Count(2), &stamps, now, &none);
        got.sort();
        let mut want = vec![name(10 * day), name(60 * day), name(70 * day)];
        want.sort();
        assert_eq!(got, want);
        let mut got = expired(
            Keep::Age(Duration::from_secs(30 * day)),
            &stamps,
            now,
            &none,
        );
        got.sort();
        assert_eq!(got, vec![name(10 * day), name(60 * day)]);
        // A stamp this run wrote or relies on stays, whatever keep says.
        let used: BTreeSet<String> = [name(10 * day)].into_iter().collect();
        assert_eq!(
            expired(
                Keep::Age(Duration::from_secs(30 * day)),
                &stamps,
                now,
                &used
            ),
            vec![name(60 * day)]
        );
        assert!(expired(Keep::Count(5), &stamps, now, &none).is_empty());
        // `-2` clashes sort after their base stamp.
        let clash = vec![
            ("20261126T224501Z".to_string(), 5),
            ("20261126T224501Z-2".to_string(), 5),
        ];
        assert_eq!(
            expired(Keep::Count(1), &clash, 5, &none),
            vec!["20261126T224501Z".to_string()]
        );
    }
}
