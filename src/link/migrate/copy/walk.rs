//! The copy's parallel walk over the app tree: a job per directory (made
//! when it runs, so few are open at once), hard-link leaders and their
//! followers, and each directory's attributes set last, once everything
//! in it is made.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::{Batches, Counters, Sel, Staged};
use crate::error::{Error, IoContext, Result};
use crate::fs::attrs::{self, Target, Xattrs};
use crate::fs::dir::Dir;
use crate::fs::gone;
use crate::fs::meta::Kind;
use crate::fs::pool::{self, Queue};
use crate::link::migrate::inventory::{Entry, Inventory, Ix};
use crate::link::migrate::journal::Record;

pub(super) enum Job {
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

/// The job for follower `ix` (in `src`, `dst`) once its leader is done:
/// a link to the leader's copy `at`, or, when the leader was not copied
/// faithfully (`None`), a copy of its own.
pub(super) fn follower_job(
    ix: Ix,
    src: Arc<Dir>,
    dst: Arc<Dir>,
    at: Option<&(Arc<Dir>, OsString)>,
) -> Job {
    match at {
        Some((to, to_name)) => Job::Link {
            ix,
            src,
            dst,
            to: to.clone(),
            to_name: to_name.clone(),
        },
        None => Job::Leaf {
            ixs: vec![ix],
            src,
            dst,
        },
    }
}

/// A directory of the app tree and its staged copy, both open.
pub(super) struct Pair {
    pub(super) src: Arc<Dir>,
    pub(super) dst: Arc<Dir>,
}

pub(super) enum LeaderState {
    /// Followers met before their leader was copied.
    Waiting(Vec<(Ix, Arc<Dir>, Arc<Dir>)>),
    /// Copied, and where (`None`: not faithfully; its followers are then
    /// copied on their own).
    Done(Option<(Arc<Dir>, OsString)>),
}

pub(super) struct Shared<'a> {
    pub(super) inv: &'a Inventory,
    pub(super) sel: &'a [Sel],
    pub(super) prior: &'a HashMap<PathBuf, Record>,
    pub(super) out: pool::Slots<Staged>,
    /// Per directory: children not finished yet, plus one while its own
    /// job runs. At zero it gets its attributes: last, so that its times
    /// stick and a read-only mode cannot stop its entries being made.
    pub(super) pending: Vec<AtomicU64>,
    /// Directories waiting for their attributes.
    pub(super) open_dirs: Mutex<HashMap<Ix, Pair>>,
    pub(super) leaders: Mutex<HashMap<Ix, LeaderState>>,
    pub(super) batches: Batches<'a>,
    pub(super) stats: Counters,
    pub(super) fid: &'a attrs::Fidelity,
    pub(super) progress: &'a crate::link::migrate::Progress,
    pub(super) fresh: &'a crate::link::migrate::Fresh,
    pub(super) app_path: &'a Path,
    pub(super) staging_path: &'a Path,
    /// The staging tree's device.
    pub(super) dst_dev: u64,
    /// Spread the work over directories (a lane each): on a network share,
    /// where a create waits for a round trip under its directory's lock.
    /// On a local disk one lane, most recent job first: the copy stays
    /// depth-first, which writes back faster there.
    pub(super) spread: bool,
}

impl Shared<'_> {
    /// Close the copy of `ix`, on the closer if there is one, else here;
    /// either way checked (a close can carry a failed write).
    pub(super) fn close(&self, ix: Ix, f: std::fs::File) -> Result<()> {
        match &self.batches.closer {
            Some(c) => {
                c.close(f, ix);
                Ok(())
            }
            None => crate::fs::closer::close(f).with_ctx("close", || self.dst_path(ix)),
        }
    }

    pub(super) fn entry(&self, ix: Ix) -> &Entry {
        self.inv.get(ix)
    }

    /// Queue `job`, which creates entries in directory `dir`; `opens`: it
    /// opens a directory of its own.
    pub(super) fn push(&self, q: &Queue<Job>, dir: Ix, job: Job, opens: bool) {
        if self.spread {
            q.push_to(dir, job, opens)
        } else {
            q.push(job)
        }
    }

    pub(super) fn src_path(&self, ix: Ix) -> PathBuf {
        self.inv.path(self.app_path, ix)
    }

    pub(super) fn dst_path(&self, ix: Ix) -> PathBuf {
        super::dst_path(self.staging_path, self.inv, ix)
    }

    pub(super) fn set(&self, ix: Ix, s: Option<Staged>) {
        self.out.put(ix as usize, s);
    }

    pub(super) fn run(&self, job: Job, q: &Queue<Job>) -> Result<()> {
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

    pub(super) fn dir(&self, ix: Ix, src: Arc<Dir>, dst: Arc<Dir>, q: &Queue<Job>) -> Result<()> {
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
    pub(super) fn make_dir(
        &self,
        ix: Ix,
        src: &Dir,
        dst: &Dir,
    ) -> Result<Option<(Arc<Dir>, Arc<Dir>)>> {
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
                let dir = matches!(dst.stat_at(&e.name), Ok(Some(m)) if m.kind == Kind::Dir);
                if let Some(r) = self.make_again(ix, dst, dir, || dst.mkdir(&e.name, 0o700))? {
                    r.with_ctx("create directory", || self.dst_path(ix))?;
                }
            }
            Err(err) => return Err(Error::io("create directory", &self.dst_path(ix), err)),
        }
        let d = dst
            .open_dir(&e.name)
            .with_ctx("open directory", || self.dst_path(ix))?;
        if self.sel[ix as usize] == Sel::Copy {
            self.stats.dirs.fetch_add(1, Relaxed);
        }
        Ok(Some((Arc::new(s), Arc::new(d))))
    }

    /// A hard link whose first name is `leader`: link now if the leader is
    /// copied, else wait for it.
    pub(super) fn follow(
        &self,
        leader: Ix,
        ix: Ix,
        src: &Arc<Dir>,
        dst: &Arc<Dir>,
        q: &Queue<Job>,
    ) {
        let lane = self.entry(ix).parent;
        let mut l = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        match l.get_mut(&leader) {
            Some(LeaderState::Done(at)) => {
                let job = follower_job(ix, src.clone(), dst.clone(), at.as_ref());
                self.push(q, lane, job, false)
            }
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
                follower_job(ix, src.clone(), dst.clone(), None),
                false,
            ),
        }
    }

    /// A leader was copied (or not): let its followers go.
    pub(super) fn leader_done(&self, ix: Ix, at: Option<(Arc<Dir>, OsString)>, q: &Queue<Job>) {
        let mut l = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = match l.insert(ix, LeaderState::Done(at.clone())) {
            Some(LeaderState::Waiting(v)) => v,
            _ => Vec::new(),
        };
        drop(l);
        for (f, src, dst) in waiting {
            let lane = self.entry(f).parent;
            self.push(q, lane, follower_job(f, src, dst, at.as_ref()), false);
        }
    }

    /// Followers still waiting after the walk: their leader never ran.
    pub(super) fn orphaned_followers(&self) -> Vec<Job> {
        let mut l = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        let mut jobs = Vec::new();
        for state in l.values_mut() {
            if let LeaderState::Waiting(v) = state {
                for (ix, src, dst) in v.drain(..) {
                    jobs.push(follower_job(ix, src, dst, None));
                }
                *state = LeaderState::Done(None);
            }
        }
        jobs
    }

    /// One unit of directory `ix` is done; at zero it gets its attributes
    /// and its parent is told.
    pub(super) fn release(&self, mut ix: Ix) -> Result<()> {
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
    pub(super) fn dir_attrs(&self, ix: Ix, src: &Dir, dst: &Dir) -> Result<()> {
        let e = self.entry(ix);
        let x = Xattrs::read(&Target::Fd(src))
            .with_ctx("read extended attributes of", || self.src_path(ix))?;
        attrs::apply_fd(dst, &e.meta, attrs::Made::by_us(0o700), &x, self.fid)
            .with_ctx("set attributes of", || self.dst_path(ix))?;
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
