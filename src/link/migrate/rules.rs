//! The per-entry rule, pure: how an app entry compares with the share's
//! entry at its path decides what a pass does with it ([`step`]), and the
//! kinds on both sides decide how an `image-wins` replacement is carried
//! out ([`swap`]). No disk, no state; docs/design.md's rules table is
//! checked against [`step`] by a test here.

use super::compare::Verdict;
use crate::config::MigrateMode;
use crate::fs::meta::Kind;

/// What to do with one app entry, given how it compares with the share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryStep {
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

/// Who committed the migration into the share target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Commit {
    /// This container did (its marker names the target, or this run just
    /// renamed its copy in): what the share lacks arrived late and belongs
    /// in it.
    Here,
    /// Another container did, or nobody yet: the share target's data is
    /// someone else's.
    Elsewhere,
}

/// What the share's entry at a differing path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShareCopy {
    /// A copy this migration made of this very app file, unchanged since
    /// (vouched for by the marker or the journal: `marker::Own`).
    Ours,
    /// Anything else: the share's own data.
    Foreign,
}

/// The rules of docs/design.md ("Migration", "One pass", step 5) for one
/// entry: its verdict, the app entry's kind, the link's mode, who
/// committed the migration and what the share's differing entry is.
pub(crate) fn step(
    v: Verdict,
    kind: Kind,
    mode: MigrateMode,
    commit: Commit,
    copy: ShareCopy,
) -> EntryStep {
    let here = commit == Commit::Here;
    let ours = copy == ShareCopy::Ours;
    match v {
        Verdict::Same { .. } => EntryStep::Drop,
        Verdict::BothDirs => EntryStep::Descend,
        Verdict::Unsettled | Verdict::Changed => EntryStep::Wait,
        Verdict::AppOnly if mode != MigrateMode::IfEmpty || here => EntryStep::CopyIn,
        Verdict::AppOnly => EntryStep::SetAside,
        // Our own copy of an older version of this very app file: nobody
        // else's version, so nothing to keep (in `image-wins` too: keeping
        // it would set the image's own data aside as "the share's").
        Verdict::Differs { .. } if here && ours && kind == Kind::File => EntryStep::Replace,
        Verdict::Differs { .. } if mode == MigrateMode::ImageWins => EntryStep::Supersede,
        Verdict::Differs { .. } => EntryStep::SetAside,
    }
}

/// How an `image-wins` replacement is carried out, by the kinds on both
/// sides (both directories never get here: their entries decide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Swap {
    /// Non-directories on both sides: one rename over the share's entry,
    /// so a reader sees the old version or the new one, never neither.
    RenameOver,
    /// A directory in the image where the share has a non-directory: the
    /// share's entry (kept already) is moved aside and checked like any
    /// replace, then the staged directory is renamed in without replacing.
    RemoveThenRename,
    /// A directory on the share where the image has a non-directory: the
    /// share's tree stays and the app entry is set aside, as in `merge`.
    /// Deleting a tree on the share that the pipeline may be writing into
    /// is not worth a type change.
    KeepShare,
}

pub(crate) fn swap(app: Kind, share: Kind) -> Swap {
    match (app == Kind::Dir, share == Kind::Dir) {
        (_, true) => Swap::KeepShare,
        (true, false) => Swap::RemoveThenRename,
        (false, false) => Swap::RenameOver,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::meta::{Identity, Time};
    use Commit::{Elsewhere, Here};
    use MigrateMode::{IfEmpty, ImageWins, Merge};
    use ShareCopy::{Foreign, Ours};

    fn same() -> Verdict {
        let t = Time { sec: 0, nsec: 0 };
        Verdict::Same {
            app: Identity {
                ino: 1,
                size: 1,
                mtime: t,
                ctime: t,
            },
        }
    }

    const DIFFERS: Verdict = Verdict::Differs { share: None };

    #[test]
    fn steps_follow_the_rules() {
        let (f, d) = (Kind::File, Kind::Dir);
        let mut cases = Vec::new();
        for mode in [IfEmpty, Merge] {
            cases.extend([
                // Identical content goes, in every mode.
                (same(), f, mode, Elsewhere, Foreign, EntryStep::Drop),
                // Different content is never dropped and never overwrites.
                (DIFFERS, f, mode, Elsewhere, Foreign, EntryStep::SetAside),
                (DIFFERS, f, mode, Here, Foreign, EntryStep::SetAside),
                (Verdict::Unsettled, f, mode, Here, Ours, EntryStep::Wait),
                (
                    Verdict::Changed,
                    f,
                    mode,
                    Elsewhere,
                    Foreign,
                    EntryStep::Wait,
                ),
            ]);
        }
        cases.extend([
            // What the share lacks: merged in `merge`, set aside in
            // `if-empty`, copied in when it arrived late in our own
            // migration.
            (
                Verdict::AppOnly,
                f,
                Merge,
                Elsewhere,
                Foreign,
                EntryStep::CopyIn,
            ),
            (
                Verdict::AppOnly,
                f,
                IfEmpty,
                Elsewhere,
                Foreign,
                EntryStep::SetAside,
            ),
            (
                Verdict::AppOnly,
                f,
                IfEmpty,
                Here,
                Foreign,
                EntryStep::CopyIn,
            ),
            // Our own outdated copy is replaced; anyone else's is not.
            (DIFFERS, f, IfEmpty, Here, Ours, EntryStep::Replace),
            (DIFFERS, d, IfEmpty, Here, Ours, EntryStep::SetAside),
            (
                Verdict::BothDirs,
                d,
                IfEmpty,
                Elsewhere,
                Foreign,
                EntryStep::Descend,
            ),
        ]);
        for (v, kind, mode, commit, copy, want) in cases {
            assert_eq!(
                step(v, kind, mode, commit, copy),
                want,
                "{v:?} {kind} {mode} {commit:?} {copy:?}"
            );
        }
    }

    #[test]
    fn image_wins_rules() {
        let (f, d) = (Kind::File, Kind::Dir);
        for (v, kind, commit, copy, want) in [
            (same(), f, Elsewhere, Foreign, EntryStep::Drop),
            (Verdict::AppOnly, f, Elsewhere, Foreign, EntryStep::CopyIn),
            (Verdict::AppOnly, d, Elsewhere, Foreign, EntryStep::CopyIn),
            // The share's version differs: kept, then replaced.
            (DIFFERS, f, Elsewhere, Foreign, EntryStep::Supersede),
            (DIFFERS, d, Elsewhere, Foreign, EntryStep::Supersede),
            (DIFFERS, Kind::Symlink, Here, Foreign, EntryStep::Supersede),
            // Our own copy of an older version of this app file is not
            // the share's data: replaced without keeping it.
            (DIFFERS, f, Here, Ours, EntryStep::Replace),
            // A journal that vouches without our commit is not enough.
            (DIFFERS, f, Elsewhere, Ours, EntryStep::Supersede),
            (Verdict::Unsettled, f, Elsewhere, Foreign, EntryStep::Wait),
            (Verdict::Changed, f, Here, Ours, EntryStep::Wait),
            (Verdict::BothDirs, d, Elsewhere, Foreign, EntryStep::Descend),
        ] {
            assert_eq!(
                step(v, kind, ImageWins, commit, copy),
                want,
                "{v:?} {kind} {commit:?} {copy:?}"
            );
        }
        // The other modes never replace the share's data.
        for mode in [IfEmpty, Merge] {
            for commit in [Elsewhere, Here] {
                assert_ne!(
                    step(DIFFERS, f, mode, commit, Foreign),
                    EntryStep::Supersede
                );
            }
        }
        assert_eq!(swap(f, f), Swap::RenameOver);
        assert_eq!(swap(Kind::Symlink, f), Swap::RenameOver);
        assert_eq!(swap(f, Kind::Symlink), Swap::RenameOver);
        assert_eq!(swap(d, f), Swap::RemoveThenRename);
        assert_eq!(swap(d, Kind::Symlink), Swap::RemoveThenRename);
        assert_eq!(swap(f, d), Swap::KeepShare);
    }

    /// One input of [`step`].
    #[derive(Clone, Copy, Debug)]
    struct Case {
        v: Verdict,
        kind: Kind,
        mode: MigrateMode,
        commit: Commit,
        copy: ShareCopy,
    }

    /// docs/design.md's rules table, row by row: the verdict column as
    /// written there, which inputs the row covers, and its step.
    type Row = (&'static str, fn(&Case) -> bool, EntryStep);

    fn rows() -> Vec<Row> {
        fn own_older(c: &Case) -> bool {
            c.commit == Here && c.copy == Ours && c.kind == Kind::File
        }
        vec![
            (
                "same content (and the app entry was settled and unchanged while compared)",
                |c| matches!(c.v, Verdict::Same { .. }),
                EntryStep::Drop,
            ),
            (
                "same content, but the app entry changed around the comparison",
                |c| c.v == Verdict::Unsettled,
                EntryStep::Wait,
            ),
            ("both are directories", |c| c.v == Verdict::BothDirs, EntryStep::Descend),
            (
                "only the app has it, `merge` or `image-wins` (or a late arrival in a migration this container committed)",
                |c| c.v == Verdict::AppOnly && (c.mode != IfEmpty || c.commit == Here),
                EntryStep::CopyIn,
            ),
            (
                "only the app has it, `if-empty`",
                |c| c.v == Verdict::AppOnly && c.mode == IfEmpty && c.commit == Elsewhere,
                EntryStep::SetAside,
            ),
            (
                "different content or type, and the share's entry is this migration's own copy of an older version",
                |c| matches!(c.v, Verdict::Differs { .. }) && own_older(c),
                EntryStep::Replace,
            ),
            (
                "different content or type, `image-wins`",
                |c| matches!(c.v, Verdict::Differs { .. }) && !own_older(c) && c.mode == ImageWins,
                EntryStep::Supersede,
            ),
            (
                "different content or type, anything else",
                |c| matches!(c.v, Verdict::Differs { .. }) && !own_older(c) && c.mode != ImageWins,
                EntryStep::SetAside,
            ),
            (
                "the app entry is no longer what the inventory saw",
                |c| c.v == Verdict::Changed,
                EntryStep::Wait,
            ),
        ]
    }

    /// The verdict/step table in docs/design.md: (verdict, step) cells.
    fn design_table() -> Vec<(String, String)> {
        let doc = include_str!("../../../docs/design.md");
        let start = doc
            .find("| verdict | step |")
            .expect("design.md has the rules table");
        doc[start..]
            .lines()
            .skip(2)
            .map(str::trim)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
                assert_eq!(cells.len(), 2, "a rules row has two cells: {l}");
                (cells[0].trim().to_string(), cells[1].trim().to_string())
            })
            .collect()
    }

    fn step_in_words(s: EntryStep) -> &'static str {
        match s {
            EntryStep::Drop => "drop",
            EntryStep::Wait => "wait",
            EntryStep::Descend => "descend",
            EntryStep::CopyIn => "copy it in",
            EntryStep::SetAside => "set it aside",
            EntryStep::Replace => "replace that copy",
            EntryStep::Supersede => "supersede",
        }
    }

    #[test]
    fn the_design_table_is_the_rule() {
        let table = design_table();
        let rows = rows();
        let written: Vec<&str> = table.iter().map(|(v, _)| v.as_str()).collect();
        let coded: Vec<&str> = rows.iter().map(|r| r.0).collect();
        assert_eq!(
            written, coded,
            "docs/design.md's rules table and this test's rows"
        );
        for ((_, words), (verdict, _, want)) in table.iter().zip(&rows) {
            assert!(
                words.starts_with(step_in_words(*want)),
                "{verdict}: design.md says {words:?}, the rule {want:?}"
            );
        }
        // Every input falls under exactly one row, and gets its step.
        let share = Identity {
            ino: 2,
            ..match same() {
                Verdict::Same { app } => app,
                _ => unreachable!(),
            }
        };
        let verdicts = [
            same(),
            Verdict::Unsettled,
            Verdict::AppOnly,
            DIFFERS,
            Verdict::Differs { share: Some(share) },
            Verdict::BothDirs,
            Verdict::Changed,
        ];
        let kinds = [Kind::File, Kind::Dir, Kind::Symlink, Kind::Fifo];
        for v in verdicts {
            for kind in kinds {
                for mode in [IfEmpty, Merge, ImageWins] {
                    for commit in [Here, Elsewhere] {
                        for copy in [Ours, Foreign] {
                            let c = Case {
                                v,
                                kind,
                                mode,
                                commit,
                                copy,
                            };
                            let hits: Vec<&Row> = rows.iter().filter(|r| (r.1)(&c)).collect();
                            assert_eq!(hits.len(), 1, "{c:?} falls under {} rows", hits.len());
                            assert_eq!(
                                step(v, kind, mode, commit, copy),
                                hits[0].2,
                                "{c:?}: {}",
                                hits[0].0
                            );
                        }
                    }
                }
            }
        }
    }
}
