//! Comparing the app tree with what the share already holds, entry by entry
//! and by content: regular files by their bytes (or, for copies this
//! migration made, by its journal), symlinks by their target, special files
//! by kind and device. Nothing here writes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::inventory::{Inventory, Ix};
use super::journal::Record;
use super::Ctx;
use crate::error::{Error, IoContext, Result};
use crate::fs::content;
use crate::fs::dir::Dir;
use crate::fs::gone;
use crate::fs::meta::{fstat, Identity, Kind, Meta, Time};
use crate::fs::pool::{self, Queue};

/// How one app entry relates to the share's entry at the same path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Same content on both sides; `app` is the app entry as compared
    /// (settled, and unchanged while compared).
    Same { app: Identity },
    /// Same content, but the app entry was changing around the comparison:
    /// look again later.
    Unsettled,
    /// Only the app side has it (a directory: its whole subtree).
    AppOnly,
    /// Both sides have it with different content or type. `share` is the
    /// share file's identity, to recognise a copy sharelink itself made.
    Differs { share: Option<Identity> },
    /// A directory on both sides: its entries have verdicts of their own.
    BothDirs,
    /// The app entry is no longer what the walk saw.
    Changed,
}

enum Job {
    Dirs {
        ix: Ix,
        app: Arc<Dir>,
        share: Arc<Dir>,
    },
    Leaf {
        ix: Ix,
        kind: Kind,
        app: Arc<Dir>,
        share: Arc<Dir>,
    },
}

/// Verdicts for every entry below `root` (the app directory against the
/// share directory `share`). Entries under an `AppOnly` or `Differs`
/// directory get none: their subtree goes as a whole.
///
/// `copied` (the staging journal) names copies this migration made: an app
/// file that is still the version copied, facing that very copy, is the
/// same without reading either.
pub(crate) fn compare(
    inv: &Inventory,
    app: &Dir,
    share: &Dir,
    share_path: &Path,
    copied: &HashMap<PathBuf, Record>,
    ctx: &mut Ctx<'_>,
) -> Result<Vec<Option<Verdict>>> {
    let out = pool::Slots::new(inv.entries.len());
    let threads = ctx.threads;
    let (mut coordinator, workers) = ctx.split();
    let app_path = workers.app_path;
    let w = Walk {
        inv,
        out: &out,
        app_path,
        share_path,
        copied,
    };
    let start = vec![Job::Dirs {
        ix: 0,
        app: Arc::new(app.try_clone().ctx("open", app_path)?),
        share: Arc::new(share.try_clone().ctx("open", share_path)?),
    }];
    let mut beat = || coordinator.beat();
    pool::run(threads, start, &|job, q| w.run(job, q), &mut beat)?;
    Ok(out.into_vec())
}

struct Walk<'a> {
    inv: &'a Inventory,
    out: &'a pool::Slots<Verdict>,
    app_path: &'a Path,
    share_path: &'a Path,
    copied: &'a HashMap<PathBuf, Record>,
}

impl Walk<'_> {
    fn set(&self, ix: Ix, v: Verdict) {
        self.out.set(ix as usize, v);
    }

    fn app(&self, ix: Ix) -> std::path::PathBuf {
        self.inv.path(self.app_path, ix)
    }

    fn share(&self, ix: Ix) -> std::path::PathBuf {
        self.inv.path(self.share_path, ix)
    }

    fn run(&self, job: Job, q: &Queue<Job>) -> Result<()> {
        match job {
            Job::Dirs { ix, app, share } => self.dirs(ix, &app, &share, q),
            Job::Leaf {
                ix,
                kind,
                app,
                share,
            } => {
                let v = self.leaf(ix, kind, &app, &share, &q.stop)?;
                self.set(ix, v);
                Ok(())
            }
        }
    }

    fn dirs(&self, ix: Ix, app: &Arc<Dir>, share: &Arc<Dir>, q: &Queue<Job>) -> Result<()> {
        self.set(ix, Verdict::BothDirs);
        let listing = share.list().with_ctx("read directory", || self.share(ix))?;
        // Sorted by name, as the inventory's children are.
        let on_share = |name: &OsString| {
            listing
                .binary_search_by(|(n, _)| n.cmp(name))
                .ok()
                .map(|i| &listing[i].1)
        };
        for c in self.inv.children(ix) {
            let e = self.inv.get(c);
            if e.changed {
                self.set(c, Verdict::Changed);
                continue;
            }
            let kind = match on_share(&e.name) {
                None => {
                    self.set(c, Verdict::AppOnly);
                    continue;
                }
                Some(Some(k)) => *k,
                Some(None) => match share.stat_at(&e.name) {
                    Ok(Some(m)) => m.kind,
                    Ok(None) => {
                        self.set(c, Verdict::AppOnly);
                        continue;
                    }
                    Err(err) => return Err(Error::io("inspect", &self.share(c), err)),
                },
            };
            if kind != e.meta.kind {
                self.set(c, Verdict::Differs { share: None });
                continue;
            }
            if kind == Kind::Dir {
                let a = match app.open_dir(&e.name) {
                    Ok(d) if d.stat().is_ok_and(|m| m.id.ino == e.meta.id.ino) => d,
                    Ok(_) => {
                        self.set(c, Verdict::Changed);
                        continue;
                    }
                    Err(err) if gone(&err) => {
                        self.set(c, Verdict::Changed);
                        continue;
                    }
                    Err(err) => return Err(Error::io("open directory", &self.app(c), err)),
                };
                let s = match share.open_dir(&e.name) {
                    Ok(d) => d,
                    // Replaced meanwhile by a non-directory.
                    Err(err) if gone(&err) => {
                        self.set(c, Verdict::Differs { share: None });
                        continue;
                    }
                    Err(err) => return Err(Error::io("open directory", &self.share(c), err)),
                };
                q.push(Job::Dirs {
                    ix: c,
                    app: Arc::new(a),
                    share: Arc::new(s),
                });
            } else {
                q.push(Job::Leaf {
                    ix: c,
                    kind,
                    app: app.clone(),
                    share: share.clone(),
                });
            }
        }
        Ok(())
    }

    fn leaf(
        &self,
        ix: Ix,
        kind: Kind,
        app: &Dir,
        share: &Dir,
        stop: &AtomicBool,
    ) -> Result<Verdict> {
        let e = self.inv.get(ix);
        let seen = Time::now();
        match kind {
            Kind::File => {
                if let Some(v) = self.known_copy(ix, app, share)? {
                    return Ok(v);
                }
                let a = match app.open_read(&e.name) {
                    Ok(f) => f,
                    Err(err) if gone(&err) => return Ok(Verdict::Changed),
                    Err(err) => return Err(Error::io("open", &self.app(ix), err)),
                };
                let before = fstat(&a).with_ctx("inspect", || self.app(ix))?;
                if before.kind != Kind::File || before.id.ino != e.meta.id.ino {
                    return Ok(Verdict::Changed);
                }
                let s = match share.open_read(&e.name) {
                    Ok(f) => f,
                    Err(err) if gone(&err) || err.raw_os_error() == Some(libc::ENXIO) => {
                        return Ok(Verdict::Differs { share: None })
                    }
                    Err(err) => return Err(Error::io("open", &self.share(ix), err)),
                };
                let sm = fstat(&s).with_ctx("inspect", || self.share(ix))?;
                if sm.kind != Kind::File {
                    return Ok(Verdict::Differs { share: None });
                }
                let same = sm.id.size == before.id.size
                    && content::equal(&a, &s, before.id.size, stop)
                        .with_ctx("compare with", || self.share(ix))?;
                if !same {
                    return Ok(Verdict::Differs { share: Some(sm.id) });
                }
                let after = fstat(&a).with_ctx("inspect", || self.app(ix))?;
                Ok(settled(before, after, seen))
            }
            Kind::Symlink => {
                let Some(before) = stat(app, &e.name, &self.app(ix))? else {
                    return Ok(Verdict::Changed);
                };
                if before.id.ino != e.meta.id.ino {
                    return Ok(Verdict::Changed);
                }
                let a = app.read_link(&e.name);
                let s = share.read_link(&e.name);
                match (a, s) {
                    (Ok(a), Ok(s)) if a == s => {}
                    (Ok(_), _) => return Ok(Verdict::Differs { share: None }),
                    (Err(err), _) if gone(&err) => return Ok(Verdict::Changed),
                    (Err(err), _) => return Err(Error::io("read symlink", &self.app(ix), err)),
                }
                let Some(after) = stat(app, &e.name, &self.app(ix))? else {
                    return Ok(Verdict::Changed);
                };
                Ok(settled(before, after, seen))
            }
            _ => {
                let Some(before) = stat(app, &e.name, &self.app(ix))? else {
                    return Ok(Verdict::Changed);
                };
                if before.id.ino != e.meta.id.ino || before.kind != kind {
                    return Ok(Verdict::Changed);
                }
                match stat(share, &e.name, &self.share(ix))? {
                    Some(s) if s.kind == kind && s.rdev == before.rdev => {}
                    _ => return Ok(Verdict::Differs { share: None }),
                }
                Ok(settled(before, before, seen))
            }
        }
    }
}

impl Walk<'_> {
    /// `Same` when the journal says the share file is the copy made of the
    /// app file as it still is; `None` when it cannot say.
    fn known_copy(&self, ix: Ix, app: &Dir, share: &Dir) -> Result<Option<Verdict>> {
        if self.copied.is_empty() {
            return Ok(None);
        }
        let Some(rec) = self.copied.get(&self.inv.rel(ix)) else {
            return Ok(None);
        };
        let name = &self.inv.get(ix).name;
        match stat(app, name, &self.app(ix))? {
            Some(a) if a.kind == Kind::File && a.id == rec.app => {}
            _ => return Ok(None),
        }
        match stat(share, name, &self.share(ix))? {
            Some(s) if rec.is_copy(&s) => Ok(Some(Verdict::Same { app: rec.app })),
            _ => Ok(None),
        }
    }
}

fn settled(before: Meta, after: Meta, seen: Time) -> Verdict {
    if after.id == before.id && before.settled(seen, super::SETTLE_NS) {
        Verdict::Same { app: before.id }
    } else {
        Verdict::Unsettled
    }
}

fn stat(dir: &Dir, name: &std::ffi::OsStr, path: &Path) -> Result<Option<Meta>> {
    dir.stat_at(name).ctx("inspect", path)
}

/// Whether the app entry `ix` (`app` is the app directory) has a
/// byte-identical copy at the same relative path under `copy` (a displaced
/// copy set aside earlier): `Same` when it has and the app entry was
/// settled and unchanged while compared, `Unsettled` when the content
/// matched but the entry was changing, `None` when there is no such copy.
pub(crate) fn already_kept(
    inv: &Inventory,
    ix: Ix,
    app: &Dir,
    copy: &Dir,
    stop: &AtomicBool,
) -> std::io::Result<Option<Verdict>> {
    let e = inv.get(ix);
    let rel = inv.rel(ix);
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    let parent = match crate::fs::tree::open_beneath(copy, parent_rel) {
        Ok(d) => d,
        Err(err) if gone(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    let app = match crate::fs::tree::open_beneath(app, parent_rel) {
        Ok(d) => d,
        Err(err) if gone(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    let seen = Time::now();
    let Some(kept) = parent.stat_at(&e.name)? else {
        return Ok(None);
    };
    if kept.kind != e.meta.kind {
        return Ok(None);
    }
    let before = match app.stat_at(&e.name)? {
        Some(m) if m.id.ino == e.meta.id.ino && m.kind == e.meta.kind => m,
        _ => return Ok(None),
    };
    if !same_content(&app, &parent, &e.name, &before, &kept, stop)? {
        return Ok(None);
    }
    Ok(match app.stat_at(&e.name)? {
        Some(after) => Some(settled(before, after, seen)),
        None => Some(Verdict::Changed),
    })
}

/// Whether the entries `name` in `a_dir` and `b_dir` (`a` and `b`: their
/// `lstat`) hold the same content: the same kind, and regular files the
/// same bytes, symlinks the same target, special files the same device;
/// two directories are alike (their entries decide).
pub(crate) fn same_content(
    a_dir: &Dir,
    b_dir: &Dir,
    name: &std::ffi::OsStr,
    a: &Meta,
    b: &Meta,
    stop: &AtomicBool,
) -> std::io::Result<bool> {
    if a.kind != b.kind {
        return Ok(false);
    }
    match a.kind {
        Kind::File if a.id.size != b.id.size => Ok(false),
        Kind::File => content::equal(
            &a_dir.open_read(name)?,
            &b_dir.open_read(name)?,
            a.id.size,
            stop,
        ),
        Kind::Symlink => Ok(a_dir.read_link(name)? == b_dir.read_link(name)?),
        Kind::Dir => Ok(true),
        _ => Ok(a.rdev == b.rdev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::fs;

    #[test]
    fn same_content_is_by_kind_and_bytes() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir(d).unwrap();
            fs::create_dir(d.join("dir")).unwrap();
            fs::write(d.join("same"), "content").unwrap();
            std::os::unix::fs::symlink("target", d.join("link")).unwrap();
        }
        fs::write(a.join("differs"), "one").unwrap();
        fs::write(b.join("differs"), "two").unwrap();
        fs::write(a.join("longer"), "one").unwrap();
        fs::write(b.join("longer"), "one more").unwrap();
        std::os::unix::fs::symlink("target", a.join("kind")).unwrap();
        fs::write(b.join("kind"), "target").unwrap();
        std::os::unix::fs::symlink("other", a.join("retargeted")).unwrap();
        std::os::unix::fs::symlink("target", b.join("retargeted")).unwrap();
        let (da, db) = (Dir::open(&a).unwrap(), Dir::open(&b).unwrap());
        let stop = AtomicBool::new(false);
        let same = |name: &str| {
            let n = OsStr::new(name);
            let ma = da.stat_at(n).unwrap().unwrap();
            let mb = db.stat_at(n).unwrap().unwrap();
            same_content(&da, &db, n, &ma, &mb, &stop).unwrap()
        };
        for name in ["same", "link", "dir"] {
            assert!(same(name), "{name}");
        }
        for name in ["differs", "longer", "kind", "retargeted"] {
            assert!(!same(name), "{name}");
        }
    }
}
