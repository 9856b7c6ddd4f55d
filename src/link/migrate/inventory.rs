//! What the app directory holds: one walk, every entry's `lstat` and the
//! time it was taken. Everything a migration later decides about an entry
//! (copy it, call it identical, delete it) refers to this record, and a
//! delete happens only when the entry still matches it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, IoContext, Result};
use crate::fs::dir::Dir;
use crate::fs::meta::{Kind, Meta, Time};

/// Index of an entry; 0 is the app directory itself.
pub(crate) type Ix = u32;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) parent: Ix,
    /// Empty for the root.
    pub(crate) name: OsString,
    pub(crate) meta: Meta,
    /// The wall-clock time just before the `lstat` ([`Meta::settled`]).
    pub(crate) seen: Time,
    /// Directories: their entries, contiguous and sorted by name.
    pub(crate) children: Range<Ix>,
    /// A hard link: the first name of the same inode in this tree.
    pub(crate) leader: Option<Ix>,
    /// The entry changed between its `lstat` and opening it (a directory
    /// replaced meanwhile): not walked, never deleted this round.
    pub(crate) changed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Inventory {
    pub(crate) entries: Vec<Entry>,
    /// Entries this process could not empty out (directories it may not
    /// write to, files it may not read), with why: a migration must not
    /// start when it could not finish.
    pub(crate) blockers: Vec<(Ix, std::io::Error)>,
}

/// The state of one [`Inventory::scan`].
struct Scan<'a> {
    inv: Inventory,
    app_path: &'a Path,
    root_dev: u64,
    /// Root may read anything: files are checked for readability only when
    /// we are not root.
    root_user: bool,
    /// First name of each inode with several names.
    links: HashMap<(u64, u64), Ix>,
    since_check: usize,
}

impl Scan<'_> {
    /// Open directory `ix` in its parent; `None` when it went away or
    /// became something else since it was listed.
    fn open(&mut self, ix: Ix, parent: &Dir) -> Result<Option<Dir>> {
        let e = &self.inv.entries[ix as usize];
        match parent.open_dir(&e.name) {
            Ok(d) => Ok(Some(d)),
            Err(err) if crate::fs::gone(&err) => {
                self.inv.entries[ix as usize].changed = true;
                Ok(None)
            }
            Err(err) => Err(Error::io(
                "open directory",
                &self.inv.path(self.app_path, ix),
                err,
            )),
        }
    }

    /// List directory `ix` into the inventory; its children's range, or
    /// `None` when it is no longer the directory that was listed.
    fn read(
        &mut self,
        ix: Ix,
        dir: &Dir,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<std::ops::Range<Ix>>> {
        let path = |w: &Self| w.inv.path(w.app_path, ix);
        let m = dir.stat().with_ctx("inspect", || path(self))?;
        if m.dev != self.root_dev {
            return Err(Error::Unsafe(format!(
                "{} is a mount point inside the data directory {}; sharelink cannot move a mount into the share or replace it with a symlink. Unmount it (drop the volume) and re-run",
                path(self).display(),
                self.app_path.display()
            )));
        }
        if m.id.ino != self.inv.entries[ix as usize].meta.id.ino {
            self.inv.entries[ix as usize].changed = true;
            return Ok(None);
        }
        // The kernel's own answer (read-only mounts, immutable flags,
        // permissions, ACLs), asked where the walk already is.
        if let Err(e) = dir.access(OsStr::new("."), libc::W_OK | libc::X_OK) {
            self.inv.blockers.push((ix, e));
        }
        let listing = dir.list().with_ctx("read directory", || path(self))?;
        let start = self.inv.entries.len() as Ix;
        for (name, _) in listing {
            let seen = Time::now();
            let meta = match dir.stat_at(&name) {
                Ok(Some(m)) => m,
                // Removed since the listing.
                Ok(None) => continue,
                Err(e) => return Err(Error::io("inspect", &path(self).join(&name), e)),
            };
            let me = self.inv.entries.len() as Ix;
            if !self.root_user && meta.kind == Kind::File {
                if let Err(e) = dir.access(&name, libc::R_OK) {
                    self.inv.blockers.push((me, e));
                }
            }
            let leader = if meta.kind == Kind::File && meta.nlink > 1 {
                match self.links.get(&(meta.dev, meta.id.ino)) {
                    Some(&l) => Some(l),
                    None => {
                        self.links.insert((meta.dev, meta.id.ino), me);
                        None
                    }
                }
            } else {
                None
            };
            self.inv.entries.push(Entry {
                parent: ix,
                name,
                meta,
                seen,
                children: 0..0,
                leader,
                changed: false,
            });
            self.since_check += 1;
            if self.since_check >= 256 {
                self.since_check = 0;
                check()?;
            }
        }
        let end = self.inv.entries.len() as Ix;
        self.inv.entries[ix as usize].children = start..end;
        Ok(Some(start..end))
    }
}

/// Paths as a tree of names: which of them (by index) end at each node.
#[derive(Default)]
struct PathTree {
    want: Vec<usize>,
    kids: std::collections::BTreeMap<OsString, PathTree>,
}

impl PathTree {
    fn of(rels: &[PathBuf]) -> PathTree {
        let mut top = PathTree::default();
        for (i, rel) in rels.iter().enumerate() {
            let mut n = &mut top;
            for c in rel.components() {
                n = n.kids.entry(c.as_os_str().to_os_string()).or_default();
            }
            n.want.push(i);
        }
        top
    }
}

impl Inventory {
    /// An inventory holding only its root, `dir` (at `path`, for messages).
    fn rooted(dir: &Dir, path: &Path) -> Result<Inventory> {
        let seen = Time::now();
        let meta = dir.stat().ctx("inspect", path)?;
        Ok(Inventory {
            entries: vec![Entry {
                parent: 0,
                name: OsString::new(),
                meta,
                seen,
                children: 0..0,
                leader: None,
                changed: false,
            }],
            blockers: Vec::new(),
        })
    }

    /// Walk `app` (opened by the caller, `app_path` only names it in
    /// messages). `check` runs every few hundred entries (signals).
    pub(crate) fn scan(
        app: &Dir,
        app_path: &Path,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Inventory> {
        let inv = Inventory::rooted(app, app_path)?;
        let root_dev = inv.entries[0].meta.dev;
        let mut walk = Scan {
            inv,
            app_path,
            root_dev,
            root_user: nix::unistd::geteuid().is_root(),
            links: HashMap::new(),
            since_check: 0,
        };
        // Directories still to read, each with its parent held open; the
        // stack keeps the walk depth-first, so few directories are open.
        let mut todo: Vec<(Ix, Option<Rc<Dir>>)> = vec![(0, None)];
        let mut root = Some(app.try_clone().ctx("open", app_path)?);
        while let Some((ix, parent)) = todo.pop() {
            let dir = match parent {
                None => root.take().expect("the root is read once"),
                Some(p) => match walk.open(ix, &p)? {
                    Some(d) => d,
                    None => continue,
                },
            };
            if let Some(children) = walk.read(ix, &dir, check)? {
                let dir = Rc::new(dir);
                for c in children.rev() {
                    if walk.inv.entries[c as usize].meta.kind == Kind::Dir {
                        todo.push((c, Some(dir.clone())));
                    }
                }
            }
        }
        Ok(walk.inv)
    }

    /// The entries at `rels` under `root` and the directories on their way,
    /// without walking anything else: the share's side of the entries an
    /// `image-wins` migration replaces (a share target may hold far more
    /// than the image). Each result is `None` where nothing is there, or a
    /// directory on the way is not one. Entries found are not walked into.
    pub(crate) fn of_paths(
        root: &Dir,
        root_path: &Path,
        rels: &[PathBuf],
    ) -> Result<(Inventory, Vec<Option<Ix>>)> {
        let top = PathTree::of(rels);
        let mut inv = Inventory::rooted(root, root_path)?;
        let mut found = vec![None; rels.len()];
        let mut todo: Vec<(Ix, &PathTree, Dir)> =
            vec![(0, &top, root.try_clone().ctx("open", root_path)?)];
        while let Some((ix, node, dir)) = todo.pop() {
            let start = inv.entries.len() as Ix;
            let mut next = Vec::new();
            for (name, kid) in &node.kids {
                let seen = Time::now();
                let Some(meta) = dir
                    .stat_at(name)
                    .with_ctx("inspect", || inv.path(root_path, ix).join(name))?
                else {
                    continue;
                };
                let me = inv.entries.len() as Ix;
                inv.entries.push(Entry {
                    parent: ix,
                    name: name.clone(),
                    meta,
                    seen,
                    children: 0..0,
                    leader: None,
                    changed: false,
                });
                if !kid.want.is_empty() {
                    for &w in &kid.want {
                        found[w] = Some(me);
                    }
                } else if meta.kind == Kind::Dir {
                    next.push((me, kid, name));
                }
            }
            inv.entries[ix as usize].children = start..inv.entries.len() as Ix;
            for (me, kid, name) in next {
                match dir.open_dir(name) {
                    Ok(d) => todo.push((me, kid, d)),
                    // Gone or replaced since: its entries count as missing.
                    Err(e) if crate::fs::gone(&e) => inv.entries[me as usize].changed = true,
                    Err(e) => return Err(Error::io("open directory", &inv.path(root_path, me), e)),
                }
            }
        }
        Ok((inv, found))
    }

    pub(crate) fn get(&self, ix: Ix) -> &Entry {
        &self.entries[ix as usize]
    }

    pub(crate) fn children(&self, ix: Ix) -> Range<Ix> {
        self.entries[ix as usize].children.clone()
    }

    /// Entries whose names differ from a sibling's only in case
    /// (`Report.csv`, `report.csv`): one file on a share that ignores case.
    /// Folded both ways, so that any name SMB's upper-case table would take
    /// for another is caught (and a few it would not).
    pub(crate) fn case_twins(&self) -> Vec<(Ix, Ix)> {
        let mut twins = Vec::new();
        for e in &self.entries {
            if e.meta.kind != Kind::Dir || e.children.len() < 2 {
                continue;
            }
            let mut upper: HashMap<String, Ix> = HashMap::new();
            let mut lower: HashMap<String, Ix> = HashMap::new();
            for c in e.children.clone() {
                let name = self.entries[c as usize].name.to_string_lossy();
                let (u, l) = (name.to_uppercase(), name.to_lowercase());
                if u == l {
                    continue; // no letters: nothing to fold
                }
                let first = upper.get(&u).or_else(|| lower.get(&l)).copied();
                match first {
                    Some(f) => twins.push((f, c)),
                    None => {
                        upper.insert(u, c);
                        lower.insert(l, c);
                    }
                }
            }
        }
        twins
    }

    /// The entry's path relative to the app directory.
    pub(crate) fn rel(&self, ix: Ix) -> PathBuf {
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
    pub(crate) fn path(&self, base: &Path, ix: Ix) -> PathBuf {
        if ix == 0 {
            base.to_path_buf()
        } else {
            base.join(self.rel(ix))
        }
    }

    /// The entry at `rel`, if the walk saw one (for tests).
    #[cfg(test)]
    pub(crate) fn find(&self, rel: &Path) -> Option<Ix> {
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
    pub(crate) fn subtree(&self, ix: Ix) -> Vec<Ix> {
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
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.len() == 1
    }
}

/// Files and bytes to copy for a selection of subtrees (for progress and
/// for the free-space check).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) entries: u64,
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// Bytes the copies will occupy (holes are not written).
    pub(crate) footprint: u64,
}

impl Totals {
    pub(crate) fn of(inv: &Inventory, roots: &[Ix]) -> Totals {
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
    fn case_twins_are_siblings_whose_names_fold_alike() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        for d in [
            "Out",
            "out",
            "x/Σίσυφος",
            "x/ΣΊΣΥΦΟΣ",
            "x/straße",
            "x/STRASSE",
        ] {
            fs::create_dir_all(a.join(d)).unwrap();
        }
        // `Out/a` and `out/A` are in different directories: not twins.
        for f in [
            "Report.csv",
            "report.csv",
            "REPORT.csv",
            "x/ok",
            "x/OK2",
            "123",
            "Out/a",
            "out/A",
        ] {
            fs::write(a.join(f), "").unwrap();
        }
        let inv = Inventory::scan(&Dir::open(&a).unwrap(), &a, &mut || Ok(())).unwrap();
        let mut pairs: Vec<(PathBuf, PathBuf)> = inv
            .case_twins()
            .into_iter()
            .map(|(x, y)| (inv.rel(x), inv.rel(y)))
            .collect();
        pairs.sort();
        let p = |x: &str, y: &str| (PathBuf::from(x), PathBuf::from(y));
        assert_eq!(
            pairs,
            [
                p("Out", "out"),
                p("REPORT.csv", "Report.csv"),
                p("REPORT.csv", "report.csv"),
                p("x/STRASSE", "x/straße"),
                // Final sigma: alike upper-cased only.
                p("x/ΣΊΣΥΦΟΣ", "x/Σίσυφος"),
            ]
        );
    }

    #[test]
    fn of_paths_holds_only_what_was_asked() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::create_dir_all(a.join("d/e")).unwrap();
        for f in ["z", "d/f", "d/g", "d/e/h", "y"] {
            fs::write(a.join(f), f).unwrap();
        }
        let rels: Vec<PathBuf> = ["d/f", "z", "d/e/h", "d/nope", "z/under"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let (inv, found) = Inventory::of_paths(&Dir::open(&a).unwrap(), &a, &rels).unwrap();
        let got: Vec<Option<PathBuf>> = found.iter().map(|f| f.map(|i| inv.rel(i))).collect();
        assert_eq!(
            got,
            [
                Some("d/f".into()),
                Some("z".into()),
                Some("d/e/h".into()),
                None,
                None
            ]
        );
        // Root, d, z, d/e, d/f, d/e/h: nothing that was not asked for.
        assert_eq!(inv.entries.len(), 6);
        assert_eq!(inv.find(Path::new("d/e/h")), found[2]);
        assert_eq!(inv.subtree(0).len(), 6);
    }

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
