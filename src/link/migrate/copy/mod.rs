//! The staged copy: chosen entries of the app tree are copied, in parallel,
//! into a staging tree on the share, as faithfully as `cp -a`, and made
//! durable with one `syncfs` per batch. The caller then commits the staging
//! tree with renames.
//!
//! A staging directory holds `tree/` (the copy) and `journal` (which files
//! are complete). It is resumable: a later run, after a crash or on
//! another replica, reuses every journaled file whose app file is still the
//! version that was copied, and copies only the rest.

mod entry;
mod walk;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::inventory::{Inventory, Ix};
use super::journal::{self, Journal, Record};
use super::layout::{ASIDE, TREE};
use super::Ctx;
use crate::error::{Error, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind};
use crate::fs::pool;
use walk::{Counters, Job, Shared};

/// What to do with one inventory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sel {
    Skip,
    /// A directory on the way to copied entries: made plain, not copied.
    Path,
    Copy,
}

/// Mark `roots` and their subtrees for copying, and their ancestors as
/// paths.
pub fn select(inv: &Inventory, roots: &[Ix]) -> Vec<Sel> {
    let mut sel = vec![Sel::Skip; inv.entries.len()];
    for &r in roots {
        for i in inv.subtree(r) {
            sel[i as usize] = Sel::Copy;
        }
        let mut p = r;
        while p != 0 {
            p = inv.get(p).parent;
            if sel[p as usize] == Sel::Skip {
                sel[p as usize] = Sel::Path;
            }
        }
    }
    sel
}

/// One copied entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    /// The app entry as it was read.
    pub app: Identity,
    /// The copy's identity (regular files), to recognise our own copy on
    /// the share later.
    pub copy: Option<Identity>,
    /// The app entry did not change while it was read and had not changed
    /// for a while before: the copy is of one settled version.
    pub faithful: bool,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    /// Files a previous run had already copied durably.
    pub resumed: u64,
    pub resumed_bytes: u64,
    pub symlinks: u64,
    pub dirs: u64,
    pub special: u64,
    pub hard_links: u64,
}

impl std::ops::AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, b: &Stats) {
        self.files += b.files;
        self.bytes += b.bytes;
        self.resumed += b.resumed;
        self.resumed_bytes += b.resumed_bytes;
        self.symlinks += b.symlinks;
        self.dirs += b.dirs;
        self.special += b.special;
        self.hard_links += b.hard_links;
    }
}

/// A staging directory: `<name>/{tree,journal}` under `parent`.
pub struct Staging {
    parent: Arc<Dir>,
    name: OsString,
    /// Where it is, for messages.
    pub path: PathBuf,
    dir: Dir,
    pub tree: Arc<Dir>,
    prior: HashMap<PathBuf, Record>,
    journal: Mutex<Journal>,
    /// Whether a previous run's staging was found and is being resumed.
    pub resumed: bool,
}

impl Staging {
    /// Open the staging directory `name` in `parent`, resuming one that is
    /// there.
    pub fn open(parent: Arc<Dir>, name: &OsStr, path: PathBuf) -> Result<Staging> {
        let resumed = match parent.mkdir(name, 0o700) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                match parent.stat_at(name).map_err(|e| Error::io("inspect", &path, e))? {
                    Some(m) if m.kind == Kind::Dir => true,
                    // sharelink's own name, never followed: a symlink there
                    // is junk or hostile, and removing it touches nothing
                    // it points to.
                    Some(m) if m.kind == Kind::Symlink => {
                        crate::warn!("removing a symlink found where sharelink keeps its staging directory: {}", path.display());
                        parent
                            .unlink(name)
                            .map_err(|e| Error::io("remove", &path, e))?;
                        parent
                            .mkdir(name, 0o700)
                            .map_err(|e| Error::io("create staging directory", &path, e))?;
                        false
                    }
                    Some(m) => {
                        return Err(Error::Unsafe(format!(
                            "{} is a {} where sharelink keeps its staging directory; move it away and re-run",
                            path.display(),
                            m.kind
                        )))
                    }
                    None => return Err(Error::io("create staging directory", &path, e)),
                }
            }
            Err(e) => return Err(Error::io("create staging directory", &path, e)),
        };
        failpoint::hit(Failpoint::StagingCreated);
        let dir = parent
            .open_dir(name)
            .map_err(|e| Error::io("open staging directory", &path, e))?;
        // A staging directory this run just made holds no journal yet.
        let prior = if resumed {
            Journal::load(&dir).map_err(|e| Error::io("read journal in", &path, e))?
        } else {
            HashMap::new()
        };
        let journal = Journal::open(&dir).map_err(|e| Error::io("write journal in", &path, e))?;
        match dir.mkdir(OsStr::new(TREE), 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(Error::io("create", &path.join(TREE), e)),
        }
        let tree = dir
            .open_dir(OsStr::new(TREE))
            .map_err(|e| Error::io("open", &path.join(TREE), e))?;
        Ok(Staging {
            parent,
            name: name.to_os_string(),
            path,
            dir,
            tree: Arc::new(tree),
            prior,
            journal: Mutex::new(journal),
            resumed,
        })
    }

    /// Files a previous run completed (for the log).
    pub fn prior_files(&self) -> usize {
        self.prior.len()
    }

    /// Bytes a previous run already copied (they occupy the share).
    pub fn prior_bytes(&self) -> u64 {
        self.prior.values().map(|r| r.app.size).sum()
    }

    /// Make everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.dir
            .sync_fs()
            .map_err(|e| Error::io("sync", &self.path, e))
    }

    /// Rename `tree` to `to/to_name`, never replacing anything.
    pub fn commit_tree(&self, to: &Dir, to_name: &OsStr) -> std::io::Result<()> {
        self.dir.rename_noreplace(OsStr::new(TREE), to, to_name)
    }

    /// Remove the staging directory and whatever it still holds: the
    /// journal first, so that no record outlives the copy it names.
    pub fn remove(self) -> Result<()> {
        let Staging {
            parent,
            name,
            path,
            dir,
            tree,
            journal,
            ..
        } = self;
        drop((journal, tree, dir));
        discard(&parent, &name).map_err(|e| Error::io("remove", &path, e))
    }

    /// The staging directory itself (beside the tree and the journal).
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// After the staged entries moved into the share: remove what is left
    /// of the tree and keep the journal, whose records now name those
    /// entries in their new place.
    pub fn close(self) -> Result<()> {
        match crate::fs::tree::remove(&self.dir, OsStr::new(TREE)) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::io("remove", &self.path.join(TREE), e)),
        }
    }

    /// Copy the entries `sel` marks from `app` into the staging tree.
    /// Returns what each copied entry was; entries that changed while being
    /// copied are still copied but not `faithful`.
    ///
    /// A copy that runs out of room is not kept for resuming: it would
    /// keep the share full for everyone (crashes and other errors keep it).
    pub fn copy(
        &mut self,
        inv: &Inventory,
        app: &Dir,
        sel: &[Sel],
        ctx: &mut Ctx<'_>,
    ) -> Result<(Vec<Option<Staged>>, Stats)> {
        let r = self.copy_all(inv, app, sel, ctx);
        if let Err(Error::Io { source, .. }) = &r {
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                self.clear();
            }
        }
        r
    }

    /// Empty the staging directory (best effort; it is redundant).
    fn clear(&self) {
        let r = discard(&self.parent, &self.name);
        match r {
            Ok(()) => {
                crate::info!(
                    "removed the partial copy {}: the share is full",
                    self.path.display()
                )
            }
            Err(e) => {
                crate::warn!(
                    "could not remove the partial copy {}: {e}",
                    self.path.display()
                )
            }
        }
    }

    fn copy_all(
        &mut self,
        inv: &Inventory,
        app: &Dir,
        sel: &[Sel],
        ctx: &mut Ctx<'_>,
    ) -> Result<(Vec<Option<Staged>>, Stats)> {
        let Ctx {
            threads,
            lock,
            fidelity,
            progress,
            fresh,
            app_path,
        } = ctx;
        let threads = *threads;
        let shared = Shared {
            inv,
            sel,
            prior: &self.prior,
            out: (0..inv.entries.len()).map(|_| Mutex::new(None)).collect(),
            pending: (0..inv.entries.len()).map(|_| AtomicU64::new(0)).collect(),
            open_dirs: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
            batches: Batches {
                done: Mutex::new((Vec::new(), Instant::now())),
                journal: &self.journal,
                dir: &self.dir,
                path: &self.path,
            },
            stats: Counters::default(),
            fid: fidelity,
            progress,
            fresh,
            app_path,
            staging_path: &self.path,
            dst_dev: self.tree.stat().map(|m| m.dev).unwrap_or(0),
            spread: crate::config::is_network_fs(&self.path),
        };
        let root_src = Arc::new(
            app.try_clone()
                .map_err(|e| Error::io("open", app_path, e))?,
        );
        let start = vec![Job::Dir {
            ix: 0,
            src: root_src,
            dst: self.tree.clone(),
        }];
        let mut beat = || -> Result<()> {
            super::heartbeat(lock, fresh, progress)?;
            shared.batches.flush(false)
        };
        pool::run(threads, start, &|job, q| shared.run(job, q), &mut beat)?;
        // Followers whose leader was never copied (it changed meanwhile, or
        // sat below a directory that did): copy them on their own.
        let orphans = shared.orphaned_followers();
        if !orphans.is_empty() {
            pool::run(threads, orphans, &|job, q| shared.run(job, q), &mut beat)?;
        }
        shared.batches.flush(true)?;
        self.sync()?;
        failpoint::hit(Failpoint::StagingSynced);
        let out = shared
            .out
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
        Ok((out, shared.stats.snapshot()))
    }
}

/// Remove the staging directory `name` in `parent`, if there is one: the
/// journal first, so that no record outlives the copy it names. What a
/// replace moved aside (`replaced.<n>` and its record) is never removed:
/// it may be another writer's file, and the staging directory then stays
/// with it for the next run to put back.
pub fn discard(parent: &Dir, name: &OsStr) -> std::io::Result<()> {
    let dir = match parent.open_dir(name) {
        Ok(d) => d,
        Err(e) if crate::fs::gone(&e) => return crate::fs::tree::remove(parent, name),
        Err(e) => return Err(e),
    };
    match dir.unlink(OsStr::new(journal::NAME)) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        _ => {}
    }
    let listed = dir.list()?;
    let kept = |n: &OsStr| {
        n.as_encoded_bytes()
            .strip_prefix(ASIDE.as_bytes())
            .is_some_and(|r| r.starts_with(b"."))
    };
    if listed.iter().any(|(n, _)| kept(n)) {
        for (n, _) in listed.iter().filter(|(n, _)| !kept(n)) {
            crate::fs::tree::remove(&dir, n)?;
        }
        return Ok(());
    }
    drop(dir);
    // Usually only the journal was left: one rmdir, not a walk.
    match parent.rmdir(name) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(_) => crate::fs::tree::remove(parent, name),
    }
}

/// How long, or how many, completed files wait before a `syncfs` makes
/// them durable and the journal records them: resumability costs one sync
/// per batch, not one per file, and a run killed early still leaves
/// progress behind.
const BATCH: std::time::Duration = std::time::Duration::from_secs(1);

const BATCH_FILES: usize = 256;

/// Completed files on their way into the journal: made durable with one
/// `syncfs` per batch, then recorded. A batch closes after [`BATCH`] or
/// [`BATCH_FILES`] files, whichever comes first.
struct Batches<'a> {
    done: Mutex<(Vec<(PathBuf, Record)>, Instant)>,
    journal: &'a Mutex<Journal>,
    dir: &'a Dir,
    path: &'a Path,
}

impl Batches<'_> {
    fn record(&self, rel: PathBuf, rec: Record) -> Result<()> {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        d.0.push((rel, rec));
        if d.0.len() < BATCH_FILES {
            return Ok(());
        }
        let batch = std::mem::take(&mut d.0);
        d.1 = Instant::now();
        drop(d);
        self.write(&batch)
    }

    /// Close the batch if it is due (or `force`).
    fn flush(&self, force: bool) -> Result<()> {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if d.0.is_empty() || !force && d.1.elapsed() < BATCH {
            return Ok(());
        }
        let batch = std::mem::take(&mut d.0);
        d.1 = Instant::now();
        drop(d);
        self.write(&batch)
    }

    fn write(&self, batch: &[(PathBuf, Record)]) -> Result<()> {
        // The bytes first, then the record that they are complete.
        self.dir
            .sync_fs()
            .map_err(|e| Error::io("sync", self.path, e))?;
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(batch)
            .map_err(|e| Error::io("write journal in", self.path, e))?;
        failpoint::hit(Failpoint::StagingJournal);
        Ok(())
    }
}
