//! Ownership: which copies on the share are this migration's own, in one
//! place. The app-side marker (this container committed its copy to the
//! share target, and which of our copies there are of entries the app
//! directory still holds), the pruning flag (the staging journal stops
//! vouching once this container has started deleting), and [`Own`], which
//! answers for an entry whose content differs whether the share's entry is
//! our copy of it ([`ShareCopy`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::inventory::{Inventory, Ix};
use super::journal::{self, Record};
use super::layout::Places;
use super::prune::Kept;
use super::rules::{Commit, ShareCopy};
use super::Ledger;
use crate::config::{Config, Link};
use crate::error::{IoContext, Result};
use crate::fs::meta::Identity;

/// Our own copies on the share (their identity there, in `copy`) of entries
/// the app directory still holds, by relative path.
pub(super) type Placed = HashMap<PathBuf, Record>;

/// The marker's text: the share target's path on the first line, then one
/// journal line per copy of ours.
fn encode(share_path: &Path, placed: &Placed) -> Vec<u8> {
    let mut text = share_path.as_os_str().as_encoded_bytes().to_vec();
    text.push(b'\n');
    for (rel, rec) in placed {
        journal::encode(&mut text, rel, rec);
    }
    text
}

/// Our copies a marker's text records, if it names `share_path`.
fn decode(text: &[u8], share_path: &Path) -> Option<Placed> {
    let (first, rest) = match text.iter().position(|&b| b == b'\n') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &[][..]),
    };
    if first != share_path.as_os_str().as_encoded_bytes() {
        return None;
    }
    Some(journal::parse_lines(rest))
}

/// The marker and the pruning flag of one link, beside its app directory.
pub(super) struct Marker {
    path: PathBuf,
    pruning: PathBuf,
    /// The share target the marker names.
    share_path: PathBuf,
}

impl Marker {
    pub(super) fn new(places: &Places, share_path: &Path) -> Marker {
        Marker {
            path: places.marker.clone(),
            pruning: places.pruning.clone(),
            share_path: share_path.to_path_buf(),
        }
    }

    /// Our copies recorded, when the marker names this share target.
    pub(super) fn read(&self) -> Option<Placed> {
        decode(&std::fs::read(&self.path).ok()?, &self.share_path)
    }

    /// Record that this container committed its copy to the share target,
    /// and which of our copies there are of entries the app directory
    /// still holds (to be replaced, not set aside, when a later run finds
    /// those entries changed).
    pub(super) fn write(&self, placed: &Placed) -> Result<()> {
        std::fs::write(&self.path, encode(&self.share_path, placed)).ctx("write", &self.path)
    }

    /// Whether this container has started deleting app entries.
    fn pruning_started(&self) -> bool {
        std::fs::symlink_metadata(&self.pruning).is_ok()
    }

    fn flag_pruning(&self) -> Result<()> {
        std::fs::write(&self.pruning, b"").ctx("write", &self.pruning)
    }
}

/// Remove the marker of a committed migration (and the pruning flag) once
/// the link is made.
pub(crate) fn forget(cfg: &Config, link: &Link) {
    let places = Places::new(cfg, link);
    for m in [places.marker, places.pruning] {
        match std::fs::remove_file(&m) {
            Ok(()) => crate::debug!("migration finished: removed {}", m.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::warn!("could not remove {}: {e}", m.display()),
        }
    }
}

/// Which copies on the share count as this migration's own, so that a newer
/// version of the same app file replaces them instead of being set aside.
pub(super) struct Own {
    /// Whether this container committed the migration into the share
    /// target.
    pub(super) commit: Commit,
    /// Recorded while their app entries stayed (marker, earlier passes).
    pub(super) placed: Placed,
    /// Deleted from the app directory by this run: a file there now under
    /// the same name is a new one (a writer made it), never a newer version.
    pruned: HashSet<PathBuf>,
    /// Whether the staging journal may vouch too: not once this container
    /// has started deleting, as it cannot tell which entries a killed run
    /// deleted.
    journal: bool,
    /// Taken out of `placed` (and the marker) while their entries were
    /// being deleted; put back for those that stayed.
    held_back: Placed,
}

impl Own {
    /// At the start of a run. `target_is_dir`: whether the share target
    /// exists as a directory, asked only when the marker names it (a marker
    /// naming a target that is gone vouches for nothing).
    pub(super) fn start(marker: &Marker, target_is_dir: impl FnOnce() -> bool) -> Own {
        let (commit, placed) = match marker.read().filter(|_| target_is_dir()) {
            Some(placed) => (Commit::Here, placed),
            None => (Commit::Elsewhere, HashMap::new()),
        };
        Own {
            commit,
            placed,
            pruned: HashSet::new(),
            journal: !marker.pruning_started(),
            held_back: HashMap::new(),
        }
    }

    /// The share's differing entry at `rel`, a regular file with identity
    /// `share`: ours when it is a copy this migration made and nobody
    /// changed since (same inode, size, times), of this very app file (same
    /// inode `app_ino`: changed, not deleted and made anew), recorded in
    /// the marker by an earlier pass or in the journal (`journal`, its
    /// record for `rel`) by the copy; never when this run deleted `rel`.
    pub(super) fn share_copy(
        &self,
        rel: &Path,
        app_ino: u64,
        share: Identity,
        journal: Option<&Record>,
    ) -> ShareCopy {
        let journal = journal.filter(|_| self.journal);
        let ours = !self.pruned.contains(rel)
            && [self.placed.get(rel), journal]
                .into_iter()
                .flatten()
                .any(|r| r.copy == share && r.app.ino == app_ino);
        if ours {
            ShareCopy::Ours
        } else {
            ShareCopy::Foreign
        }
    }

    /// Before deleting: the marker must never name an entry that may be
    /// gone (after a kill, a new file under its name would pass for a
    /// newer version of our copy), and the journal stops vouching.
    pub(super) fn before_prune(
        &mut self,
        marker: &Marker,
        inv: &Inventory,
        ledger: &Ledger,
    ) -> Result<()> {
        if !ledger.deletable.iter().any(Option::is_some) {
            return Ok(());
        }
        if self.commit == Commit::Here && !self.placed.is_empty() {
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
                marker.write(&self.placed)?;
            }
        }
        if self.journal {
            marker.flag_pruning()?;
            self.journal = false;
        }
        Ok(())
    }

    /// After deleting (`kept`: what stayed): what went is never ours again;
    /// what stayed, with a copy of ours on the share, is.
    pub(super) fn after_prune(&mut self, inv: &Inventory, ledger: &Ledger, kept: &[(Ix, Kept)]) {
        let kept: HashSet<Ix> = kept.iter().map(|&(ix, _)| ix).collect();
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
                    Record {
                        app: inv.get(ix).meta.id,
                        copy: id,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::dir::Dir;
    use crate::fs::meta::Time;

    fn id(ino: u64, size: u64) -> Identity {
        let t = Time { sec: 7, nsec: 9 };
        Identity {
            ino,
            size,
            mtime: t,
            ctime: t,
        }
    }

    fn rec(app: u64, copy: u64) -> Record {
        Record {
            app: id(app, 1),
            copy: id(copy, 1),
        }
    }

    fn marker_in(dir: &Path) -> Marker {
        Marker {
            path: dir.join(".app.sharelink-committed"),
            pruning: dir.join(".app.sharelink-pruning"),
            share_path: PathBuf::from("/share/app"),
        }
    }

    #[test]
    fn the_marker_round_trips_and_names_its_target() {
        let placed: Placed = [
            (PathBuf::from("a"), rec(1, 11)),
            (PathBuf::from("d/new\nline"), rec(2, 12)),
        ]
        .into_iter()
        .collect();
        let text = encode(Path::new("/share/app"), &placed);
        assert_eq!(decode(&text, Path::new("/share/app")), Some(placed.clone()));
        // Another target (the link's share path changed): not ours.
        assert_eq!(decode(&text, Path::new("/share/other")), None);
        // A marker with no copies recorded (written at the commit).
        let bare = encode(Path::new("/share/app"), &Placed::new());
        assert_eq!(decode(&bare, Path::new("/share/app")), Some(Placed::new()));
        assert_eq!(
            decode(b"/share/app", Path::new("/share/app")),
            Some(Placed::new())
        );

        let t = tempfile::tempdir().unwrap();
        let m = marker_in(t.path());
        assert_eq!(m.read(), None);
        m.write(&placed).unwrap();
        assert_eq!(m.read(), Some(placed));
        assert!(!m.pruning_started());
        m.flag_pruning().unwrap();
        assert!(m.pruning_started());
    }

    #[test]
    fn own_copies_are_vouched_for_by_marker_or_journal() {
        let t = tempfile::tempdir().unwrap();
        let m = marker_in(t.path());
        // No marker: committed elsewhere, and only the journal vouches.
        let own = Own::start(&m, || true);
        assert_eq!(own.commit, Commit::Elsewhere);
        let a = Path::new("a");
        let j = rec(1, 11);
        assert_eq!(own.share_copy(a, 1, id(11, 1), Some(&j)), ShareCopy::Ours);
        // Another app inode (deleted and made anew), or another copy.
        assert_eq!(
            own.share_copy(a, 2, id(11, 1), Some(&j)),
            ShareCopy::Foreign
        );
        assert_eq!(
            own.share_copy(a, 1, id(11, 2), Some(&j)),
            ShareCopy::Foreign
        );
        assert_eq!(own.share_copy(a, 1, id(11, 1), None), ShareCopy::Foreign);

        // A marker naming the target: committed here, and its records vouch.
        m.write(&[(a.to_path_buf(), rec(1, 11))].into_iter().collect())
            .unwrap();
        let own = Own::start(&m, || true);
        assert_eq!(own.commit, Commit::Here);
        assert_eq!(own.share_copy(a, 1, id(11, 1), None), ShareCopy::Ours);
        // ...unless the target is gone.
        assert_eq!(Own::start(&m, || false).commit, Commit::Elsewhere);

        // Once pruning started, the journal no longer vouches.
        m.flag_pruning().unwrap();
        let own = Own::start(&m, || true);
        let b = Path::new("b");
        let jb = rec(2, 12);
        assert_eq!(
            own.share_copy(b, 2, id(12, 1), Some(&jb)),
            ShareCopy::Foreign
        );
        assert_eq!(own.share_copy(a, 1, id(11, 1), None), ShareCopy::Ours);
    }

    #[test]
    fn pruned_names_are_never_ours_again_and_kept_ones_are() {
        let t = tempfile::tempdir().unwrap();
        let app = t.path().join("app");
        std::fs::create_dir(&app).unwrap();
        for n in ["gone", "stays"] {
            std::fs::write(app.join(n), n).unwrap();
        }
        let dir = Dir::open(&app).unwrap();
        let inv = Inventory::scan(&dir, &app, &mut || Ok(())).unwrap();
        let ix = |rel: &str| inv.find(Path::new(rel)).unwrap();
        let (gone, stays) = (ix("gone"), ix("stays"));
        let m = marker_in(t.path());
        let placed: Placed = [
            (PathBuf::from("gone"), rec(1, 11)),
            (PathBuf::from("stays"), rec(2, 12)),
        ]
        .into_iter()
        .collect();
        m.write(&placed).unwrap();
        let mut own = Own::start(&m, || true);
        let mut ledger = Ledger::new(inv.entries.len());
        ledger.deletable[gone as usize] = Some(inv.get(gone).meta.id);
        ledger.deletable[stays as usize] = Some(inv.get(stays).meta.id);
        ledger.copies[stays as usize] = Some(id(22, 5));

        own.before_prune(&m, &inv, &ledger).unwrap();
        // The marker names neither while they may go; the journal is done.
        assert_eq!(m.read(), Some(Placed::new()));
        assert!(m.pruning_started());

        own.after_prune(&inv, &ledger, &[(stays, Kept::Changed)]);
        assert!(!own.placed.contains_key(Path::new("gone")));
        assert_eq!(
            own.share_copy(Path::new("gone"), 1, id(11, 1), Some(&rec(1, 11))),
            ShareCopy::Foreign
        );
        // What stayed is ours: its newest copy, as the ledger has it.
        assert_eq!(
            own.placed.get(Path::new("stays")).map(|r| r.copy),
            Some(id(22, 5))
        );
    }
}
