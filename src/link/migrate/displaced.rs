//! The set-aside store, `<share_root>/.sharelink/displaced/<share path>/`:
//! what the share must not take is kept there under a UTC stamp, complete
//! and synced, never dropped; copies already kept are found by bytes and not
//! made again; `keep` removes old stamps. Only the lock's holder writes or
//! clears a link's store.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compare::{self, Verdict};
use super::copy::{Sel, Staging};
use super::inventory::{Inventory, Ix};
use super::layout::{EXPIRED, PARTIAL, SHARE_SIDE};
use super::stage::{At, Stage};
use super::{Ctx, Ledger, Migration, Outcome};
use crate::config::Keep;
use crate::error::{Error, IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind};
use crate::fs::{pool, tree};

/// Which complete set-aside copies `keep` removes, of `stamps` (name and
/// its time in seconds since the epoch) at `now`: never one in `used`
/// (this migration wrote it or relies on it).
pub(crate) fn expired(
    keep: Keep,
    stamps: &[(String, u64)],
    now: u64,
    used: &BTreeSet<String>,
) -> Vec<String> {
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

/// Where a stamped copy is staged and committed: the store's directory
/// and its path.
struct Store {
    base: Arc<Dir>,
    path: PathBuf,
}

impl Migration<'_> {
    /// The store, made if missing.
    fn store(&self) -> Result<Store> {
        let base = tree::make_beneath(&self.share_root, &self.displaced_rel, &self.cfg.share_root)?;
        Ok(Store {
            base: Arc::new(base.dir),
            path: self.cfg.share_root.join(&self.displaced_rel),
        })
    }

    /// Stage `sel` of `inv` (read from `from`; `roots`, the subtrees it
    /// keeps) as `<stamp>.partial` in the store (resuming `partial`),
    /// commit it as `<stamp>` (or `<stamp>-N`), synced. `share_side`: a copy
    /// of the share's versions (`image-wins`), marked so in the partial
    /// copy. Returns what was staged and the stamp's name.
    #[allow(clippy::too_many_arguments)]
    fn keep_stamped(
        &self,
        store: &Store,
        partial: Option<String>,
        inv: &Inventory,
        from: &Dir,
        roots: &[Ix],
        sel: &[Sel],
        share_side: bool,
        ctx: &mut Ctx<'_>,
    ) -> Result<(Stage, String)> {
        let stamp =
            partial.unwrap_or_else(|| crate::clock::Utc::at(std::time::SystemTime::now()).stamp());
        let name = format!("{stamp}{PARTIAL}");
        let at = At {
            parent: &store.base,
            name: OsStr::new(&name),
            path: store.path.join(&name),
            room_path: &store.path,
            announce: false,
        };
        let mark = |staging: &Staging| {
            if !share_side {
                return Ok(());
            }
            match staging.dir().create(OsStr::new(SHARE_SIDE), 0o600) {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                Err(e) => Err(Error::io("mark", &staging.path, e)),
            }
        };
        let stage = self.stage(at, inv, from, roots, sel, ctx, mark)?;
        ctx.lock.verify()?;
        let name = commit_stamped(&stage.staging, &store.base, &store.path, &stamp)?;
        failpoint::hit(Failpoint::DisplaceRenamed);
        store.base.sync_fs().ctx("sync", &store.path)?;
        if share_side {
            failpoint::hit(Failpoint::SupersedeKept);
        }
        Ok((stage, name))
    }

    /// Move `aside` to `displaced/<share path>/<stamp>/<rel>` (its own
    /// name when `rel` is unknown). Returns where it is.
    pub(super) fn keep_aside(
        &self,
        staging: &Dir,
        aside: &OsStr,
        rel: Option<&Path>,
    ) -> Result<PathBuf> {
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
        let (parent, file) = super::split_rel(&rel);
        let stamp_path = base_path.join(&name);
        let stamp_dir = base.open_dir(OsStr::new(&name)).ctx("open", &stamp_path)?;
        let to = tree::make_beneath(&stamp_dir, parent, &stamp_path)?.dir;
        staging
            .rename_noreplace(aside, &to, file)
            .with_ctx("keep", || stamp_path.join(&rel))?;
        Ok(stamp_path.join(rel))
    }

    /// Keep the share's entries `roots` (non-directories, in `share_inv`)
    /// under `displaced/<share path>/<stamp>/`, complete and synced. Per
    /// share entry: the identity the kept copy is of (the entry may be
    /// replaced only while it still has it); `None` when it was changing.
    ///
    /// Never matched against older set-aside copies: one found there could
    /// be removed by `keep` long before this version's own stamp would be.
    pub(super) fn keep_share_versions(
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
        let store = self.store()?;
        let SetAside { partial, .. } =
            SetAside::find(&store.base, true).ctx("read directory", &store.path)?;
        let (_, under) = leaves_under(share_inv, roots);
        let sel = select_leaves(share_inv, roots, &under);
        // The copy's messages name the share's entries.
        let app_path = std::mem::replace(&mut ctx.app_path, self.share_path.clone());
        let r = self.keep_stamped(&store, partial, share_inv, target, roots, &sel, true, ctx);
        ctx.app_path = app_path;
        let (stage, name) = r?;
        stage.staging.remove()?;
        self.used(&name);
        for &s in roots {
            kept[s as usize] = stage.staged[s as usize]
                .filter(|st| st.faithful)
                .map(|st| st.app);
        }
        out.displaced += &stage.stats;
        out.displaced_to = Some(store.path.join(&name));
        Ok(kept)
    }

    /// After a successful migration, under the lock: remove the set-aside
    /// copies `keep` lets go. A copy is first renamed to `<stamp>.expired`,
    /// so that a half-removed one (a crash) never serves as a kept copy;
    /// leftovers of that kind go too. `.partial` copies are never touched.
    /// Everything is done through directory descriptors without following
    /// symlinks (the share may hold anything). Returns how many went.
    pub(super) fn retain(&self, keep: Keep, ctx: &mut Ctx<'_>) -> Result<u64> {
        let base_path = self.cfg.share_root.join(&self.displaced_rel);
        let base = match tree::open_beneath(&self.share_root, &self.displaced_rel) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(0),
            Err(e) => return Err(Error::io("open", &base_path, e)),
        };
        let listing = base.list().ctx("read directory", &base_path)?;
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
                .with_ctx("rename expired set-aside copy", || base_path.join(name))?;
            leftovers.push(to);
        }
        for name in &leftovers {
            tree::remove(&base, OsStr::new(name)).with_ctx("remove", || base_path.join(name))?;
            failpoint::hit(Failpoint::KeepRemoved);
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
    pub(super) fn set_aside(
        &self,
        inv: &Inventory,
        app: &Dir,
        roots: &[Ix],
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
        doomed: &mut [Option<Identity>],
    ) -> Result<()> {
        let store = self.store()?;
        let SetAside { stamps, partial } =
            SetAside::find(&store.base, false).ctx("read directory", &store.path)?;
        let (leaves, under) = leaves_under(inv, roots);
        let kept = self.kept_before(inv, app, &stamps, &leaves, ctx)?;
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
                out.displaced_to = stamps.first().map(|st| store.path.join(&st.name));
            }
            return Ok(());
        }
        let sel = select_leaves(inv, &todo, &under);
        let (stage, name) =
            self.keep_stamped(&store, partial, inv, app, &todo, &sel, false, ctx)?;
        stage.staging.remove()?;
        self.used(&name);
        let staged = Ledger::from_staged(inv, &stage.staged);
        let mut count = 0;
        for &l in &todo {
            if let Some(id) = staged.deletable[l as usize] {
                doomed[l as usize] = Some(id);
                count += 1;
            }
        }
        out.displaced += &stage.stats;
        out.displaced_to = Some(store.path.join(&name));
        tracing::warn!(
            link = %self.link.app.display(),
            entries = count,
            to = %store.path.join(&name).display(),
            "app entries that differ from the share's (or that the share lacks, with migrate = \"if-empty\") were set aside, not merged; \
             if the pipeline replaced this link's symlink with a directory and wrote there, its writes are among them: copy back what you need from there"
        );
        Ok(())
    }

    /// For each leaf, the app identity if a complete earlier set-aside copy
    /// holds it byte for byte.
    fn kept_before(
        &self,
        inv: &Inventory,
        app: &Dir,
        stamps: &[Stamp],
        leaves: &[Ix],
        ctx: &mut Ctx<'_>,
    ) -> Result<Vec<Option<Verdict>>> {
        let found = pool::Slots::new(inv.entries.len());
        if stamps.is_empty() || leaves.is_empty() {
            return Ok(found.into_vec());
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
                            found.set(ix as usize, id);
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
        Ok(found.into_vec())
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
            if let Some(stamp) = n.strip_suffix(PARTIAL) {
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
            tree::remove(base, OsStr::new(&format!("{p}{PARTIAL}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keep_removes_only_old_stamps_never_used_ones() {
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

    #[test]
    fn set_aside_copies_select_leaves_and_the_directories_on_their_way() {
        let t = tempfile::tempdir().unwrap();
        let app = t.path().join("app");
        for d in ["keep/deep/empty", "other"] {
            std::fs::create_dir_all(app.join(d)).unwrap();
        }
        for f in ["keep/x", "keep/deep/y", "other/z", "top"] {
            std::fs::write(app.join(f), f).unwrap();
        }
        let dir = Dir::open(&app).unwrap();
        let inv = Inventory::scan(&dir, &app, &mut || Ok(())).unwrap();
        let ix = |rel: &str| inv.find(Path::new(rel)).unwrap();
        let (leaves, under) = leaves_under(&inv, &[ix("keep")]);
        let mut names: Vec<PathBuf> = leaves.iter().map(|&l| inv.rel(l)).collect();
        names.sort();
        // Non-directories and empty directories.
        assert_eq!(
            names,
            ["keep/deep/empty", "keep/deep/y", "keep/x"].map(PathBuf::from)
        );
        assert!(under[ix("keep/deep") as usize] && !under[ix("other") as usize]);
        // One leaf of the subtree: the directories above it inside the
        // subtree are copied (with their attributes), those outside only
        // made on the way.
        let sel = select_leaves(&inv, &[ix("keep/deep/y")], &under);
        assert_eq!(sel[ix("keep/deep/y") as usize], Sel::Copy);
        assert_eq!(sel[ix("keep/deep") as usize], Sel::Copy);
        assert_eq!(sel[ix("keep") as usize], Sel::Copy);
        assert_eq!(sel[0], Sel::Path);
        for skipped in ["keep/x", "keep/deep/empty", "other", "other/z", "top"] {
            assert_eq!(sel[ix(skipped) as usize], Sel::Skip, "{skipped}");
        }
        // A leaf outside any kept subtree: its parents are only paths.
        let sel = select_leaves(&inv, &[ix("other/z")], &under);
        assert_eq!(sel[ix("other") as usize], Sel::Path);
    }

    #[test]
    fn clashing_stamps_sort_after_their_base() {
        assert!(stamp_key("20261126T224501Z-3") > stamp_key("20261126T224501Z-2"));
        assert!(stamp_key("20261126T224501Z-2") > stamp_key("20261126T224501Z"));
        assert!(stamp_key("20261126T224502Z") > stamp_key("20261126T224501Z-9"));
    }
}
