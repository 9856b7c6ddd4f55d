//! What the app directory holds: one walk, every entry's `lstat` and the
//! time it was taken. Everything a migration later decides about an entry
//! (copy it, call it identical, delete it) refers to this record, and a
//! delete happens only when the entry still matches it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::fs::dir::Dir;
use crate::fs::meta::{Kind, Meta, Time};

/// Index of an entry; 0 is the app directory itself.
pub type Ix = u32;

#[derive(Debug, Clone)]
pub struct Entry {
    pub parent: Ix,
    /// Empty for the root.
    pub name: OsString,
    pub meta: Meta,
    /// The wall-clock time just before the `lstat` ([`Meta::settled`]).
    pub seen: Time,
    /// Directories: their entries, contiguous and sorted by name.
    pub children: Range<Ix>,
    /// A hard link: the first name of the same inode in this tree.
    pub leader: Option<Ix>,
    /// The entry changed between its `lstat` and opening it (a directory
    /// replaced meanwhile): not walked, never deleted this round.
    pub changed: bool,
}

#[derive(Debug, Default)]
pub struct Inventory {
    pub entries: Vec<Entry>,
    /// Entries this process could not empty out (directories it may not
    /// write to, files it may not read), with why: a migration must not
    /// start when it could not finish.
    pub blockers: Vec<(Ix, std::io::Error)>,
}

impl Inventory {
    /// Walk `app` (opened by the caller, `app_path` only names it in
    /// messages). `check` runs every few hundred entries (signals).
    pub fn scan(
        app: &Dir,
        app_path: &Path,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Inventory> {
        let seen = Time::now();
        let root_meta = app.stat().map_err(|e| Error::io("inspect", app_path, e))?;
        let mut inv = Inventory {
            entries: vec![Entry {
                parent: 0,
                name: OsString::new(),
                meta: root_meta,
                seen,
                children: 0..0,
                leader: None,
                changed: false,
            }],
            blockers: Vec::new(),
        };
        // The kernel's own answer (read-only mounts, immutable flags,
        // permissions, ACLs), asked where the walk already is: files only
        // when we are not root, who may read anything.
        let root_user = nix::unistd::geteuid().is_root();
        let mut links: HashMap<(u64, u64), Ix> = HashMap::new();
        // Directories still to read, each with its parent held open; the
        // stack keeps the walk depth-first, so few directories are open.
        let mut todo: Vec<(Ix, Option<Rc<Dir>>)> = vec![(0, None)];
        let mut root = Some(
            app.try_clone()
                .map_err(|e| Error::io("open", app_path, e))?,
        );
        let mut since_check = 0usize;
        while let Some((ix, parent)) = todo.pop() {
            let dir = match parent {
                None => root.take().expect("the root is read once"),
                Some(p) => {
                    let e = &inv.entries[ix as usize];
                    match p.open_dir(&e.name) {
                        Ok(d) => d,
                        Err(err)
                            if matches!(
                                err.raw_os_error(),
                                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                            ) =>
                        {
                            inv.entries[ix as usize].changed = true;
                            continue;
                        }
                        Err(err) => {
                            return Err(Error::io("open directory", &inv.path(app_path, ix), err))
                        }
                    }
                }
            };
            let m = dir
                .stat()
                .map_err(|e| Error::io("inspect", &inv.path(app_path, ix), e))?;
            if m.dev != root_meta.dev {
                return Err(Error::Unsafe(format!(
                    "{} is a mount point inside the data directory {}; sharelink cannot move a mount into the share or replace it with a symlink. Unmount it (drop the volume) and re-run",
                    inv.path(app_path, ix).display(),
                    app_path.display()
                )));
            }
            if m.id.ino != inv.entries[ix as usize].meta.id.ino {
                inv.entries[ix as usize].changed = true;
                continue;
            }
            if let Err(e) = dir.access(OsStr::new("."), libc::W_OK | libc::X_OK) {
                inv.blockers.push((ix, e));
            }
            let listing = dir
                .list()
                .map_err(|e| Error::io("read directory", &inv.path(app_path, ix), e))?;
            let start = inv.entries.len() as Ix;
            for (name, _) in listing {
                let seen = Time::now();
                let meta = match dir.stat_at(&name) {
                    Ok(Some(m)) => m,
                    // Removed since the listing.
                    Ok(None) => continue,
                    Err(e) => {
                        return Err(Error::io("inspect", &inv.path(app_path, ix).join(&name), e))
                    }
                };
                let me = inv.entries.len() as Ix;
                if !root_user && meta.kind == Kind::File {
                    if let Err(e) = dir.access(&name, libc::R_OK) {
                        inv.blockers.push((me, e));
                    }
                }
                let leader = if meta.kind == Kind::File && meta.nlink > 1 {
                    match links.get(&(meta.dev, meta.id.ino)) {
                        Some(&l) => Some(l),
                        None => {
                            links.insert((meta.dev, meta.id.ino), me);
                            None
                        }
                    }
                } else {
                    None
                };
                inv.entries.push(Entry {
                    parent: ix,
                    name,
                    meta,
                    seen,
                    children: 0..0,
                    leader,
                    changed: false,
                });
                since_check += 1;
                if since_check >= 256 {
                    since_check = 0;
                    check()?;
                }
            }
            let end = inv.entries.len() as Ix;
            inv.entries[ix as usize].children = start..end;
            let dir = Rc::new(dir);
            for c in (start..end).rev() {
                if inv.entries[c as usize].meta.kind == Kind::Dir {
                    todo.push((c, Some(dir.clone())));
                }
            }
        }
        Ok(inv)
    }

    pub fn get(&self, ix: Ix) -> &Entry {
        &self.entries[ix as usize]
    }

    pub fn children(&self, ix: Ix) -> Range<Ix> {
        self.entries[ix as usize].children.clone()
    }

    /// The entry's path relative to the app directory.
    pub fn rel(&self, ix: Ix) -> PathBuf {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut i = ix;
        while i != 0 {
            let e = &self.entries[i as usize];
            names.push(&e.name);
            i = e.parent;
        }
        names.iter().rev().collect()
    }

    /// `base` joined with the entry's relative path (for messages).
    pub fn path(&self, base: &Path, ix: Ix) -> PathBuf {
        if ix == 0 {
            base.to_path_buf()
        } else {
            base.join(self.rel(ix))
        }
    }

    /// The entry at `rel`, if the walk saw one.
    pub fn find(&self, rel: &Path) -> Option<Ix> {
        let mut ix = 0;
        for c in rel.components() {
            let name = c.as_os_str();
            let r = self.children(ix);
            let kids = &self.entries[r.start as usize..r.end as usize];
            let pos = kids
                .binary_search_by(|e| e.name.as_os_str().cmp(name))
                .ok()?;
            ix = r.start + pos as Ix;
        }
        Some(ix)
    }

    /// `ix` and everything below it, parents before children.
    pub fn subtree(&self, ix: Ix) -> Vec<Ix> {
        let mut out = Vec::new();
        let mut stack = vec![ix];
        while let Some(i) = stack.pop() {
            out.push(i);
            for c in self.children(i).rev() {
                stack.push(c);
            }
        }
        out
    }

    /// Whether the app directory holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 1
    }
}

/// Files and bytes to copy for a selection of subtrees (for progress and
/// for the free-space check).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Bytes the copies will occupy (holes are not written).
    pub footprint: u64,
}

impl Totals {
    pub fn of(inv: &Inventory, roots: &[Ix]) -> Totals {
        let mut t = Totals::default();
        for &r in roots {
            for i in inv.subtree(r) {
                let e = inv.get(i);
                t.entries += 1;
                if e.meta.kind == Kind::File && e.leader.is_none() {
                    t.files += 1;
                    t.bytes += e.meta.id.size;
                    t.footprint += e.meta.footprint();
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn walks_sorted_with_hard_links_and_finds_paths() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::create_dir_all(a.join("d/e")).unwrap();
        fs::write(a.join("z"), "z").unwrap();
        fs::write(a.join("d/f"), "f").unwrap();
        fs::hard_link(a.join("d/f"), a.join("d/e/g")).unwrap();
        std::os::unix::fs::symlink("nowhere", a.join("l")).unwrap();
        let inv = Inventory::scan(&Dir::open(&a).unwrap(), &a, &mut || Ok(())).unwrap();
        let rels: Vec<_> = (1..inv.entries.len() as Ix).map(|i| inv.rel(i)).collect();
        assert_eq!(rels.len(), 6, "{rels:?}");
        let f = inv.find(Path::new("d/f")).unwrap();
        let g = inv.find(Path::new("d/e/g")).unwrap();
        assert_eq!(inv.rel(f), Path::new("d/f"));
        // One of the two names leads, the other follows.
        assert_eq!(
            [inv.get(f).leader, inv.get(g).leader]
                .iter()
                .filter(|l| l.is_some())
                .count(),
            1
        );
        assert_eq!(
            inv.get(inv.find(Path::new("l")).unwrap()).meta.kind,
            Kind::Symlink
        );
        assert!(inv.find(Path::new("d/nope")).is_none());
        let t = Totals::of(&inv, &[0]);
        assert_eq!((t.files, t.bytes), (2, 2));
        assert_eq!(inv.subtree(inv.find(Path::new("d")).unwrap()).len(), 4);
    }
}
