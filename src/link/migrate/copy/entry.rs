//! Copying one entry into the staging tree: a regular file (or the
//! complete copy a journal names), a symlink, a special file, a hard link
//! to its leader's copy; each checked against the inventory's record of
//! it, so that only a settled, unchanged version counts as faithful.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use super::walk::Shared;
use super::Staged;
use crate::error::{Error, IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::attrs::{self, Loss, Target, Xattrs};
use crate::fs::content;
use crate::fs::dir::Dir;
use crate::fs::gone;
use crate::fs::meta::{fstat, Identity, Kind, Meta, Time};
use crate::link::migrate::inventory::Ix;
use crate::link::migrate::journal::Record;

impl Shared<'_> {
    pub(super) fn leaf(
        &self,
        ix: Ix,
        src: &Dir,
        dst: &Dir,
        stop: &AtomicBool,
    ) -> Result<Option<Staged>> {
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
        let before = fstat(&from).with_ctx("inspect", || self.src_path(ix))?;
        if before.kind != Kind::File || before.id.ino != e.meta.id.ino {
            return Ok(None);
        }
        let settled = before.settled(seen, crate::link::migrate::SETTLE_NS);
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
        let (after, copy, to) = self.write_file(ix, &from, &before, dst, stop)?;
        self.close(ix, to)?;
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
        failpoint::hit(Failpoint::StagingFile);
        Ok(Some(Staged {
            app: before.id,
            copy: Some(copy.id),
            faithful,
        }))
    }

    /// Write the staged copy of regular file `ix` from `from` (`before`:
    /// its `fstat`): made with its final mode where it can be, its bytes
    /// (holes stay holes), its attributes. Returns the `fstat` of the
    /// source and of the copy afterwards, and the copy, still open.
    fn write_file(
        &self,
        ix: Ix,
        from: &std::fs::File,
        before: &Meta,
        dst: &Dir,
        stop: &AtomicBool,
    ) -> Result<(Meta, Meta, std::fs::File)> {
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
            from,
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
        .with_ctx("copy to", || self.dst_path(ix))?;
        let x =
            attrs::read_file(from).with_ctx("read extended attributes of", || self.src_path(ix))?;
        attrs::apply_fd(&to, before, attrs::Made::by_us(perm), &x, self.fid)
            .with_ctx("set attributes of", || self.dst_path(ix))?;
        let after = fstat(from).with_ctx("inspect", || self.src_path(ix))?;
        let mut copy = fstat(&to).with_ctx("inspect", || self.dst_path(ix))?;
        if (copy.uid, copy.gid, copy.perm) != (before.uid, before.gid, before.perm) {
            attrs::recheck_fd(&to, before, &copy, self.fid)
                .with_ctx("set attributes of", || self.dst_path(ix))?;
            copy = fstat(&to).with_ctx("inspect", || self.dst_path(ix))?;
        }
        Ok((after, copy, to))
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

    /// Where making entry `ix` in `dst` found a name an earlier run left
    /// (EEXIST): `None` when what is there is kept (`keep`), else it is
    /// unlinked and `make` runs again, with its result.
    pub(super) fn make_again<T>(
        &self,
        ix: Ix,
        dst: &Dir,
        keep: bool,
        make: impl FnOnce() -> std::io::Result<T>,
    ) -> Result<Option<std::io::Result<T>>> {
        if keep {
            return Ok(None);
        }
        dst.unlink(&self.entry(ix).name)
            .with_ctx("remove", || self.dst_path(ix))?;
        Ok(Some(make()))
    }

    /// Create the staged file, replacing an incomplete copy an earlier run
    /// left.
    fn create(&self, ix: Ix, dst: &Dir, perm: u32) -> Result<std::fs::File> {
        let name = &self.entry(ix).name;
        let created = match dst.create(name, perm) {
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => self
                .make_again(ix, dst, false, || dst.create(name, perm))?
                .expect("not kept"),
            r => r,
        };
        created.with_ctx("create", || self.dst_path(ix))
    }

    fn symlink(&self, ix: Ix, src: &Dir, dst: &Dir) -> Result<Option<Staged>> {
        let e = self.entry(ix);
        let Some((before, seen)) = self.still(ix, src)? else {
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
                let same = dst.read_link(&e.name).ok().as_deref() == Some(target.as_os_str());
                if let Some(r) = self.make_again(ix, dst, same, || dst.symlink(&target, &e.name))? {
                    r.with_ctx("create symlink", || self.dst_path(ix))?;
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
        let Some((before, seen)) = self.still(ix, src)? else {
            return Ok(None);
        };
        if self.fid.skips(Loss::SpecialFiles) {
            return Ok(Some(self.checked(ix, src, before, seen)));
        }
        self.fresh.wait()?;
        let mknod = || dst.mknod(&e.name, before.kind, 0o600, before.rdev);
        let made = match mknod() {
            Ok(()) => true,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                let same = matches!(dst.stat_at(&e.name), Ok(Some(m)) if m.kind == before.kind && m.rdev == before.rdev);
                if let Some(r) = self.make_again(ix, dst, same, mknod)? {
                    r.with_ctx("create", || self.dst_path(ix))?;
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

    /// The entry's `lstat` now, if it is still the one the walk saw, and
    /// the time just before it was taken.
    fn still(&self, ix: Ix, src: &Dir) -> Result<Option<(Meta, Time)>> {
        let e = self.entry(ix);
        let seen = Time::now();
        match src.stat_at(&e.name) {
            Ok(Some(m)) if m.kind == e.meta.kind && m.id.ino == e.meta.id.ino => {
                Ok(Some((m, seen)))
            }
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
                && before.settled(seen, crate::link::migrate::SETTLE_NS),
        }
    }

    fn node_attrs(&self, ix: Ix, src: &Dir, dst: &Dir, meta: &Meta) -> Result<()> {
        let name = &self.entry(ix).name;
        let p = src
            .proc_path(name)
            .with_ctx("inspect", || self.src_path(ix))?;
        let x = Xattrs::read(&Target::Path(&p))
            .with_ctx("read extended attributes of", || self.src_path(ix))?;
        attrs::apply_at(dst, name, meta, &x, self.fid)
            .with_ctx("set attributes of", || self.dst_path(ix))
    }

    /// A second name of an inode already copied: link it, or, where the
    /// share has no hard links, copy it again.
    pub(super) fn hard_link(
        &self,
        ix: Ix,
        src: &Dir,
        dst: &Dir,
        to: &Dir,
        to_name: &OsStr,
        stop: &AtomicBool,
    ) -> Result<Option<Staged>> {
        let e = self.entry(ix);
        let Some((before, seen)) = self.still(ix, src)? else {
            return Ok(None);
        };
        if self.fid.skips(Loss::HardLinks) {
            return self.file(ix, src, dst, stop);
        }
        self.fresh.wait()?;
        let linked = match to.hard_link(to_name, dst, &e.name) {
            Ok(()) => true,
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                let leader = to.stat_at(to_name).ok().flatten().map(|m| m.id.ino);
                let here = dst.stat_at(&e.name).ok().flatten().map(|m| m.id.ino);
                let same = leader.is_some() && leader == here;
                self.make_again(ix, dst, same, || to.hard_link(to_name, dst, &e.name))?
                    .is_none_or(|r| r.is_ok())
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
}
