//! The staged copy: chosen entries of the app tree are copied, in parallel,
//! into a staging tree on the share, as faithfully as `cp -a`, and made
//! durable with one `syncfs` per batch. The caller then commits the staging
//! tree with renames.
//!
//! A staging directory holds `tree/` (the copy) and `journal` (which files
//! are complete). It is resumable: a later run, after a crash or on
//! another replica, reuses every journaled file whose app file is still the
//! version that was copied, and copies only the rest.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::inventory::{Entry, Inventory, Ix};
use super::journal::{self, Journal, Record};
use super::Ctx;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fs::attrs::{self, Loss, Target, Xattrs};
use crate::fs::content;
use crate::fs::dir::Dir;
use crate::fs::gone;
use crate::fs::meta::{fstat, Identity, Kind, Meta, Time};
use crate::fs::pool::{self, Queue};

pub const TREE: &str = "tree";
/// In the staging directory: a share entry moved aside to be replaced
/// (our own older copy of an app file), checked there before the new copy
/// takes its name.
pub const ASIDE: &str = "replaced";

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
        failpoint::hit("staging.created");
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
        failpoint::hit("staging.synced");
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
        failpoint::hit("staging.journal");
        Ok(())
    }
}

enum Job {
    /// Copy the selected children of directory `ix`, whose source and
    /// staged copy are open.
    Dir {
        ix: Ix,
        src: Arc<Dir>,
        dst: Arc<Dir>,
    },
    /// Make the staged copy of directory `ix` in its parent's (open:
    /// `src`, `dst`), then copy its children. Made when it runs, not when
    /// its parent is walked, so a directory with thousands of
    /// subdirectories does not hold them all open at once.
    MakeDir {
        ix: Ix,
        src: Arc<Dir>,
        dst: Arc<Dir>,
    },
    /// Copy non-directories of one directory.
    Leaf {
        ixs: Vec<Ix>,
        src: Arc<Dir>,
        dst: Arc<Dir>,
    },
    /// Make a hard link to the already copied first name of its inode.
    Link {
        ix: Ix,
        src: Arc<Dir>,
        dst: Arc<Dir>,
        to: Arc<Dir>,
        to_name: OsString,
    },
}

/// A directory of the app tree and its staged copy, both open.
struct Pair {
    src: Arc<Dir>,
    dst: Arc<Dir>,
}

enum LeaderState {
    /// Followers met before their leader was copied.
    Waiting(Vec<(Ix, Arc<Dir>, Arc<Dir>)>),
    /// Copied, and where (`None`: not faithfully; its followers are then
    /// copied on their own).
    Done(Option<(Arc<Dir>, OsString)>),
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
    resumed: AtomicU64,
    resumed_bytes: AtomicU64,
    symlinks: AtomicU64,
    dirs: AtomicU64,
    special: AtomicU64,
    hard_links: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            files: self.files.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            resumed: self.resumed.load(Relaxed),
            resumed_bytes: self.resumed_bytes.load(Relaxed),
            symlinks: self.symlinks.load(Relaxed),
            dirs: self.dirs.load(Relaxed),
            special: self.special.load(Relaxed),
            hard_links: self.hard_links.load(Relaxed),
        }
    }
}

struct Shared<'a> {
    inv: &'a Inventory,
    sel: &'a [Sel],
    prior: &'a HashMap<PathBuf, Record>,
    out: Vec<Mutex<Option<Staged>>>,
    /// Per directory: children not finished yet, plus one while its own
    /// job runs. At zero it gets its attributes: last, so that its times
    /// stick and a read-only mode cannot stop its entries being made.
    pending: Vec<AtomicU64>,
    /// Directories waiting for their attributes.
    open_dirs: Mutex<HashMap<Ix, Pair>>,
    leaders: Mutex<HashMap<Ix, LeaderState>>,
    batches: Batches<'a>,
    stats: Counters,
    fid: &'a attrs::Fidelity,
    progress: &'a super::Progress,
    fresh: &'a super::Fresh,
    app_path: &'a Path,
    staging_path: &'a Path,
    /// The staging tree's device.
    dst_dev: u64,
    /// Spread the work over directories (a lane each): on a network share,
    /// where a create waits for a round trip under its directory's lock.
    /// On a local disk one lane, most recent job first: the copy stays
    /// depth-first, which writes back faster there.
    spread: bool,
}

impl Shared<'_> {
    fn entry(&self, ix: Ix) -> &Entry {
        self.inv.get(ix)
    }

    /// Queue `job`, which creates entries in directory `dir`; `opens`: it
    /// opens a directory of its own.
    fn push(&self, q: &Queue<Job>, dir: Ix, job: Job, opens: bool) {
        if self.spread {
            q.push_to(dir, job, opens)
        } else {
            q.push(job)
        }
    }

    fn src_path(&self, ix: Ix) -> PathBuf {
        self.inv.path(self.app_path, ix)
    }

    fn dst_path(&self, ix: Ix) -> PathBuf {
        self.staging_path.join(TREE).join(self.inv.rel(ix))
    }

    fn set(&self, ix: Ix, s: Option<Staged>) {
        *self.out[ix as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn run(&self, job: Job, q: &Queue<Job>) -> Result<()> {
        match job {
            Job::Dir { ix, src, dst } => self.dir(ix, src, dst, q),
            Job::MakeDir { ix, src, dst } => match self.make_dir(ix, &src, &dst)? {
                Some((s, d)) => self.dir(ix, s, d, q),
                // Changed since the walk: left for the next pass.
                None => self.release(self.entry(ix).parent),
            },
            Job::Leaf { ixs, src, dst } => {
                for ix in ixs {
                    let s = self.leaf(ix, &src, &dst, &q.stop)?;
                    self.set(ix, s);
                    let e = self.entry(ix);
                    if e.meta.kind == Kind::File && e.meta.nlink > 1 && e.leader.is_none() {
                        let at = s
                            .filter(|s| s.faithful)
                            .map(|_| (dst.clone(), e.name.clone()));
                        self.leader_done(ix, at, q);
                    }
                    self.release(e.parent)?;
                }
                Ok(())
            }
            Job::Link {
                ix,
                src,
                dst,
                to,
                to_name,
            } => {
                let s = self.hard_link(ix, &src, &dst, &to, &to_name, &q.stop)?;
                self.set(ix, s);
                self.release(self.entry(ix).parent)
            }
        }
    }

    fn dir(&self, ix: Ix, src: Arc<Dir>, dst: Arc<Dir>, q: &Queue<Job>) -> Result<()> {
        let kids: Vec<Ix> = self
            .inv
            .children(ix)
            .filter(|&c| self.sel[c as usize] != Sel::Skip && !self.entry(c).changed)
            .collect();
        self.pending[ix as usize].store(kids.len() as u64 + 1, Relaxed);
        self.open_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                ix,
                Pair {
                    src: src.clone(),
                    dst: dst.clone(),
                },
            );
        let mut leaves = Vec::new();
        for c in kids {
            let e = self.entry(c);
            if e.meta.kind == Kind::Dir {
                self.push(
                    q,
                    ix,
                    Job::MakeDir {
                        ix: c,
                        src: src.clone(),
                        dst: dst.clone(),
                    },
                    true,
                );
            } else if let Some(leader) = e.leader {
                self.follow(leader, c, &src, &dst, q);
            } else {
                leaves.push(c);
            }
        }
        // Enough jobs to keep every worker busy, few enough that handing
        // them out costs little next to the work.
        let per_job = (leaves.len() / (q.threads() * 4)).clamp(1, 64);
        for chunk in leaves.chunks(per_job) {
            self.push(
                q,
                ix,
                Job::Leaf {
                    ixs: chunk.to_vec(),
                    src: src.clone(),
                    dst: dst.clone(),
                },
                false,
            );
        }
        // This job's own unit.
        self.release(ix)
    }

    /// Make the staged directory for `ix` and open both sides. `None` when
    /// the app directory changed since the walk.
    fn make_dir(&self, ix: Ix, src: &Dir, dst: &Dir) -> Result<Option<(Arc<Dir>, Arc<Dir>)>> {
        let e = self.entry(ix);
        let s = match src.open_dir(&e.name) {
            Ok(d) => d,
            Err(err) if gone(&err) => return Ok(None),
            Err(err) => return Err(Error::io("open directory", &self.src_path(ix), err)),
        };
        match s.stat() {
            Ok(m) if m.id.ino == e.meta.id.ino => {}
            Ok(_) => return Ok(None),
            Err(err) => return Err(Error::io("inspect", &self.src_path(ix), err)),
        }
        self.fresh.wait()?;
        match dst.mkdir(&e.name, 0o700) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                // Left by an earlier run: keep a directory, clear anything else.
                if !matches!(dst.stat_at(&e.name), Ok(Some(m)) if m.kind == Kind::Dir) {
                    dst.unlink(&e.name)
                        .map_err(|x| Error::io("remove", &self.dst_path(ix), x))?;
                    dst.mkdir(&e.name, 0o700)
                        .map_err(|x| Error::io("create directory", &self.dst_path(ix), x))?;
                }
            }
            Err(err) => return Err(Error::io("create directory", &self.dst_path(ix), err)),
        }
        let d = dst
            .open_dir(&e.name)
            .map_err(|err| Error::io("open directory", &self.dst_path(ix), err))?;
        if self.sel[ix as usize] == Sel::Copy {
            self.stats.dirs.fetch_add(1, Relaxed);
        }
        Ok(Some((Arc::new(s), Arc::new(d))))
    }

    /// A hard link whose first name is `leader`: link now if the leader is
    /// copied, else wait for it.
    fn follow(&self, leader: Ix, ix: Ix, src: &Arc<Dir>, dst: &Arc<Dir>, q: &Queue<Job>) {
        let lane = self.entry(ix).parent;
        let mut l = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        match l.get_mut(&leader) {
            Some(LeaderState::Done(Some((to, to_name)))) => self.push(
                q,
                lane,
                Job::Link {
                    ix,
                    src: src.clone(),
                    dst: dst.clone(),
                    to: to.clone(),
                    to_name: to_name.clone(),
                },
                false,
            ),
            Some(LeaderState::Done(None)) => self.push(
                q,
                lane,
                Job::Leaf {
                    ixs: vec![ix],
                    src: src.clone(),
                    dst: dst.clone(),
                },
                false,
            ),
            Some(LeaderState::Waiting(v)) => v.push((ix, src.clone(), dst.clone())),
            None if self.sel[leader as usize] == Sel::Copy && !self.entry(leader).changed => {
                l.insert(
                    leader,
                    LeaderState::Waiting(vec![(ix, src.clone(), dst.clone())]),
                );
            }
            // The leader is not being copied: copy this name on its own.
            None => self.push(
                q,
                lane,
                Job::Leaf {
                    ixs: vec![ix],
                    src: src.clone(),
                    dst: dst.clone(),
                },
                false,
            ),
        }
    }

    /// A leader was copied (or not): let its followers go.
    fn leader_done(&self, ix: Ix, at: Option<(Arc<Dir>, OsString)>, q: &Queue<Job>) {
        let mut l = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = match l.insert(ix, LeaderState::Done(at.clone())) {
            Some(LeaderState::Waiting(v)) => v,
            _ => Vec::new(),
        };
        drop(l);
        for (f, src, dst) in waiting {
            let lane = self.entry(f).parent;
            let job = match &at {
                Some((to, to_name)) => Job::Link {
                    ix: f,
                    src,
                    dst,
                    to: to.clone(),
                    to_name: to_name.clone(),
                },
                None => Job::Leaf {
                    ixs: vec![f],
                    src,
                    dst,
                },
            };
            self.push(q, lane, job, false);
        }
    }

    /// Followers still waiting after the walk: their leader never ran.
    fn orphaned_followers(&self) -> Vec<Job> {
        let mut l = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        let mut jobs = Vec::new();
        for state in l.values_mut() {
            if let LeaderState::Waiting(v) = state {
                for (ix, src, dst) in v.drain(..) {
                    jobs.push(Job::Leaf {
                        ixs: vec![ix],
                        src,
                        dst,
                    });
                }
                *state = LeaderState::Done(None);
            }
        }
        jobs
    }

    fn leaf(&self, ix: Ix, src: &Dir, dst: &Dir, stop: &AtomicBool) -> Result<Option<Staged>> {
        match self.entry(ix).meta.kind {
            Kind::File => self.file(ix, src, dst, stop),
            Kind::Symlink => self.symlink(ix, src, dst),
            Kind::Dir => unreachable!("directories are jobs of their own"),
            _ => self.special(ix, src, dst),
        }
    }

    /// Copy a regular file, or reuse the complete copy an earlier run made.
    fn file(&self, ix: Ix, src: &Dir, dst: &Dir, stop: &AtomicBool) -> Result<Option<Staged>> {
        let e = self.entry(ix);
        let seen = Time::now();
        let from = match src.open_read(&e.name) {
            Ok(f) => f,
            Err(err) if gone(&err) || err.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
            Err(err) => return Err(Error::io("open", &self.src_path(ix), err)),
        };
        let before = fstat(&from).map_err(|err| Error::io("inspect", &self.src_path(ix), err))?;
        if before.kind != Kind::File || before.id.ino != e.meta.id.ino {
            return Ok(None);
        }
        let settled = before.settled(seen, super::SETTLE_NS);
        let rel = self.inv.rel(ix);
        if let Some(copy) = self.completed_before(&rel, &before, dst, &e.name) {
            self.stats.resumed.fetch_add(1, Relaxed);
            self.stats.resumed_bytes.fetch_add(copy.size, Relaxed);
            self.progress.add(1, copy.size);
            return Ok(Some(Staged {
                app: before.id,
                copy: Some(copy),
                faithful: settled,
            }));
        }
        self.fresh.wait()?;
        // Made with its final mode (no chmod later) unless set-id bits would
        // exist before the owner is right; nobody else can reach it yet
        // (the staging directory is 0700).
        let perm = if before.perm & 0o6000 == 0 {
            before.perm
        } else {
            0o600
        };
        let to = self.create(ix, dst, perm)?;
        content::copy(
            &from,
            &to,
            before.id.size,
            before.looks_sparse(),
            content::Devices {
                src: before.dev,
                dst: self.dst_dev,
            },
            content::Watch {
                stop,
                copied: self.progress.copied(),
            },
        )
        .map_err(|err| Error::io("copy to", &self.dst_path(ix), err))?;
        let x = attrs::read_file(&from)
            .map_err(|err| Error::io("read extended attributes of", &self.src_path(ix), err))?;
        attrs::apply_fd(&to, &before, attrs::Made::by_us(perm), &x, self.fid)
            .map_err(|err| Error::io("set attributes of", &self.dst_path(ix), err))?;
        let after = fstat(&from).map_err(|err| Error::io("inspect", &self.src_path(ix), err))?;
        let mut copy = fstat(&to).map_err(|err| Error::io("inspect", &self.dst_path(ix), err))?;
        if (copy.uid, copy.gid, copy.perm) != (before.uid, before.gid, before.perm) {
            attrs::recheck_fd(&to, &before, &copy, self.fid)
                .map_err(|err| Error::io("set attributes of", &self.dst_path(ix), err))?;
            copy = fstat(&to).map_err(|err| Error::io("inspect", &self.dst_path(ix), err))?;
        }
        drop(to);
        let faithful = after.id == before.id && settled;
        if faithful {
            self.batches.record(
                rel,
                Record {
                    app: before.id,
                    copy: copy.id,
                },
            )?;
        }
        self.stats.files.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(before.id.size, Relaxed);
        // The bytes were counted as they were copied.
        self.progress.add(1, 0);
        failpoint::hit("staging.file");
        Ok(Some(Staged {
            app: before.id,
            copy: Some(copy.id),
            faithful,
        }))
    }

    /// The staged copy an earlier run completed of this version of the app
    /// file, if the journal says so and it is still there.
    fn completed_before(
        &self,
        rel: &Path,
        app: &Meta,
        dst: &Dir,
        name: &OsStr,
    ) -> Option<Identity> {
        let rec = self.prior.get(rel).filter(|r| r.app == app.id)?;
        match dst.stat_at(name) {
            Ok(Some(m)) if rec.is_copy(&m) => Some(m.id),
            _ => None,
        }
    }

    /// Create the staged file, replacing an incomplete copy an earlier run
    /// left.
    fn create(&self, ix: Ix, dst: &Dir, perm: u32) -> Result<std::fs::File> {
        let name = &self.entry(ix).name;
        match dst.create(name, perm) {
            Ok(f) => Ok(f),
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                dst.unlink(name)
                    .map_err(|x| Error::io("remove", &self.dst_path(ix), x))?;
                dst.create(name, perm)
                    .map_err(|x| Error::io("create", &self.dst_path(ix), x))
            }
            Err(err) => Err(Error::io("create", &self.dst_path(ix), err)),
        }
    }

    fn symlink(&self, ix: Ix, src: &Dir, dst: &Dir) -> Result<Option<Staged>> {
        let e = self.entry(ix);
        let seen = Time::now();
        let Some(before) = self.still(ix, src)? else {
            return Ok(None);
        };
        let target = match src.read_link(&e.name) {
            Ok(t) => t,
            Err(err) if gone(&err) || err.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(err) => return Err(Error::io("read symlink", &self.src_path(ix), err)),
        };
        self.fresh.wait()?;
        match dst.symlink(&target, &e.name) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                if dst.read_link(&e.name).ok().as_deref() != Some(target.as_os_str()) {
                    dst.unlink(&e.name)
                        .map_err(|x| Error::io("remove", &self.dst_path(ix), x))?;
                    dst.symlink(&target, &e.name)
                        .map_err(|x| Error::io("create symlink", &self.dst_path(ix), x))?;
                }
            }
            Err(err) if attrs::is_refusal(&err) => {
                return Err(Error::Io {
                    context: format!(
                        "create symlink {}: the share cannot hold symlinks (an SMB share needs the mfsymlinks mount option)",
                        self.dst_path(ix).display()
                    ),
                    source: err,
                })
            }
            Err(err) => return Err(Error::io("create symlink", &self.dst_path(ix), err)),
        }
        self.node_attrs(ix, src, dst, &before)?;
        self.stats.symlinks.fetch_add(1, Relaxed);
        Ok(Some(self.checked(ix, src, before, seen)))
    }

    /// FIFOs, sockets and device nodes are made anew. A share that cannot
    /// hold them loses the node only (they hold no data): counted and
    /// reported, not an error.
    fn special(&self, ix: Ix, src: &Dir, dst: &Dir) -> Result<Option<Staged>> {
        let e = self.entry(ix);
        let seen = Time::now();
        let Some(before) = self.still(ix, src)? else {
            return Ok(None);
        };
        if self.fid.refuses(Loss::SpecialFiles) {
            self.fid.lost(Loss::SpecialFiles);
            return Ok(Some(self.checked(ix, src, before, seen)));
        }
        self.fresh.wait()?;
        let mknod = || dst.mknod(&e.name, before.kind, 0o600, before.rdev);
        let made = match mknod() {
            Ok(()) => true,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                let same = matches!(dst.stat_at(&e.name), Ok(Some(m)) if m.kind == before.kind && m.rdev == before.rdev);
                if !same {
                    dst.unlink(&e.name)
                        .map_err(|x| Error::io("remove", &self.dst_path(ix), x))?;
                    mknod().map_err(|x| Error::io("create", &self.dst_path(ix), x))?;
                }
                true
            }
            Err(err) if attrs::is_refusal(&err) => {
                let _ = self.fid.attempt(Loss::SpecialFiles, || Err(err));
                false
            }
            Err(err) => return Err(Error::io("create", &self.dst_path(ix), err)),
        };
        if made {
            self.node_attrs(ix, src, dst, &before)?;
            self.stats.special.fetch_add(1, Relaxed);
        }
        Ok(Some(self.checked(ix, src, before, seen)))
    }

    /// The entry's `lstat` now, if it is still the one the walk saw.
    fn still(&self, ix: Ix, src: &Dir) -> Result<Option<Meta>> {
        let e = self.entry(ix);
        match src.stat_at(&e.name) {
            Ok(Some(m)) if m.kind == e.meta.kind && m.id.ino == e.meta.id.ino => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(err) => Err(Error::io("inspect", &self.src_path(ix), err)),
        }
    }

    /// What was copied, faithful if the entry did not change meanwhile.
    fn checked(&self, ix: Ix, src: &Dir, before: Meta, seen: Time) -> Staged {
        let after = src.stat_at(&self.entry(ix).name).ok().flatten();
        Staged {
            app: before.id,
            copy: None,
            faithful: after.map(|a| a.id) == Some(before.id)
                && before.settled(seen, super::SETTLE_NS),
        }
    }

    fn node_attrs(&self, ix: Ix, src: &Dir, dst: &Dir, meta: &Meta) -> Result<()> {
        let name = &self.entry(ix).name;
        let p = src
            .proc_path(name)
            .map_err(|err| Error::io("inspect", &self.src_path(ix), err))?;
        let x = Xattrs::read(&Target::Path(&p))
            .map_err(|err| Error::io("read extended attributes of", &self.src_path(ix), err))?;
        attrs::apply_at(dst, name, meta, &x, self.fid)
            .map_err(|err| Error::io("set attributes of", &self.dst_path(ix), err))
    }

    /// A second name of an inode already copied: link it, or, where the
    /// share has no hard links, copy it again.
    fn hard_link(
        &self,
        ix: Ix,
        src: &Dir,
        dst: &Dir,
        to: &Dir,
        to_name: &OsStr,
        stop: &AtomicBool,
    ) -> Result<Option<Staged>> {
        let e = self.entry(ix);
        let seen = Time::now();
        let Some(before) = self.still(ix, src)? else {
            return Ok(None);
        };
        if self.fid.refuses(Loss::HardLinks) {
            self.fid.lost(Loss::HardLinks);
            return self.file(ix, src, dst, stop);
        }
        self.fresh.wait()?;
        let linked = match to.hard_link(to_name, dst, &e.name) {
            Ok(()) => true,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                let leader = to.stat_at(to_name).ok().flatten().map(|m| m.id.ino);
                let here = dst.stat_at(&e.name).ok().flatten().map(|m| m.id.ino);
                if leader.is_some() && leader == here {
                    true
                } else {
                    dst.unlink(&e.name)
                        .map_err(|x| Error::io("remove", &self.dst_path(ix), x))?;
                    to.hard_link(to_name, dst, &e.name).is_ok()
                }
            }
            Err(err)
                if attrs::is_refusal(&err)
                    || matches!(err.raw_os_error(), Some(libc::EMLINK | libc::EXDEV)) =>
            {
                let _ = self.fid.attempt(Loss::HardLinks, || Err(err));
                return self.file(ix, src, dst, stop);
            }
            Err(err) => return Err(Error::io("link", &self.dst_path(ix), err)),
        };
        if !linked {
            self.fid.lost(Loss::HardLinks);
            return self.file(ix, src, dst, stop);
        }
        self.stats.hard_links.fetch_add(1, Relaxed);
        Ok(Some(self.checked(ix, src, before, seen)))
    }

    /// One unit of directory `ix` is done; at zero it gets its attributes
    /// and its parent is told.
    fn release(&self, mut ix: Ix) -> Result<()> {
        loop {
            if self.pending[ix as usize].fetch_sub(1, Relaxed) != 1 {
                return Ok(());
            }
            let dirs = self
                .open_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ix);
            if let Some(p) = dirs {
                if self.sel[ix as usize] == Sel::Copy {
                    self.dir_attrs(ix, &p.src, &p.dst)?;
                }
            }
            if ix == 0 {
                return Ok(());
            }
            ix = self.entry(ix).parent;
        }
    }

    /// A directory's owner, mode, xattrs and times, as the walk saw them
    /// (reading it again now would see the times its listing moved).
    fn dir_attrs(&self, ix: Ix, src: &Dir, dst: &Dir) -> Result<()> {
        let e = self.entry(ix);
        let x = Xattrs::read(&Target::Fd(src))
            .map_err(|err| Error::io("read extended attributes of", &self.src_path(ix), err))?;
        attrs::apply_fd(dst, &e.meta, attrs::Made::by_us(0o700), &x, self.fid)
            .map_err(|err| Error::io("set attributes of", &self.dst_path(ix), err))?;
        self.set(
            ix,
            Some(Staged {
                app: e.meta.id,
                copy: None,
                faithful: true,
            }),
        );
        Ok(())
    }
}
