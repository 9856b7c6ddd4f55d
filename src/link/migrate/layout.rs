//! Where a link's migration keeps things on disk: every name sharelink
//! gives its own files and directories during a migration (docs/design.md,
//! "Where things are", lists exactly these; a test checks it), where they
//! are for one link ([`Places`]), and what an interrupted migration left
//! there ([`Leftovers`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::{Config, Link, RESERVED_DIR};
use crate::fs::dir::Dir;
use crate::fs::{names, tree};

/// Beside the share target (`.<name>.sharelink-staging`): the staging
/// directory, on the same filesystem so that the commit is a rename.
pub(crate) const STAGING_SUFFIX: &str = "sharelink-staging";
/// In the staging directory: the copy being built.
pub(crate) const TREE: &str = "tree";
/// In the staging directory: which staged files are complete.
pub(crate) const JOURNAL: &str = "journal";
/// In the staging directory: a share entry moved aside to be replaced
/// (our own older copy of an app file), checked there before the new copy
/// takes its name.
pub(crate) const ASIDE: &str = "replaced";
/// Beside an entry moved aside (`replaced.<n>.where`): its path in the
/// target, recorded before it is moved, so that the next run can put it
/// back.
pub(crate) const WHERE_SUFFIX: &str = ".where";
/// The name a file of sharelink's is written under before it is renamed
/// into place (`replaced.<n>.where.tmp`).
pub(crate) const TMP_SUFFIX: &str = ".tmp";
/// Beside the app directory: this container committed its copy to the
/// share target.
const MARKER_SUFFIX: &str = "sharelink-committed";
/// Beside the app directory: this container has started deleting app
/// entries, so the staging journal may name copies of entries that are gone
/// (and a writer may have made new files under their names).
const PRUNING_SUFFIX: &str = "sharelink-pruning";
/// Beside an app file a writer had open when it was unlinked: its content,
/// being copied back.
pub(crate) const RESCUING_SUFFIX: &str = "sharelink-rescuing";
/// Beside an app file: a rescued file's content when a writer took its
/// name meanwhile (`<file>.sharelink-rescued-<n>`).
pub(crate) const RESCUED_SUFFIX: &str = "sharelink-rescued";
/// Under `<share_root>/.sharelink/`: set-aside copies, per share path.
const DISPLACED: &str = "displaced";
/// The suffix of a set-aside copy being built (`<stamp>.partial`).
pub(crate) const PARTIAL: &str = ".partial";
/// The suffix of a set-aside copy `keep` let go, while it is removed.
pub(crate) const EXPIRED: &str = ".expired";
/// In an interrupted set-aside copy (`<stamp>.partial/`): it is of the
/// share's versions, not of app entries.
pub(crate) const SHARE_SIDE: &str = "share-side";
/// Under `<share_root>/.sharelink/`: the per-link locks.
pub(crate) const LOCKS: &str = "locks";

/// Every name above, for the test that docs/design.md lists exactly these.
#[cfg(test)]
const ALL: &[&str] = &[
    STAGING_SUFFIX,
    TREE,
    JOURNAL,
    ASIDE,
    WHERE_SUFFIX,
    TMP_SUFFIX,
    MARKER_SUFFIX,
    PRUNING_SUFFIX,
    RESCUING_SUFFIX,
    RESCUED_SUFFIX,
    DISPLACED,
    PARTIAL,
    EXPIRED,
    SHARE_SIDE,
    LOCKS,
];

/// What an interrupted migration of one link left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Leftovers {
    /// A staging directory beside the share target: a copy in progress.
    pub(crate) staging: bool,
    /// A `<stamp>.partial` under `displaced/`: a set-aside copy in progress.
    pub(crate) displacing: bool,
    /// This container committed its copy to the share and had not finished
    /// emptying the app directory or making the symlink.
    pub(crate) committed: bool,
    /// A run (here or in another container) committed its copy and did not
    /// finish: its journal is still beside the share target.
    pub(crate) journal: bool,
}

impl Leftovers {
    pub(crate) fn any(&self) -> bool {
        self.staging || self.displacing || self.committed || self.journal
    }

    /// For `status`: what the next run will finish.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.staging {
            parts.push("a copy into the share was interrupted; the next run resumes it");
        }
        if self.displacing {
            parts.push("setting conflicting files aside was interrupted; the next run resumes it");
        }
        if self.committed {
            parts.push("the data is in the share; the next run finishes emptying the app directory and makes the symlink");
        } else if self.journal && !self.staging {
            parts.push("a copy into the share was committed by a run that did not finish; the next run checks what is left here against it and finishes");
        }
        parts.join("; ")
    }
}

/// Where the leftovers of `link`'s migration would be.
pub(crate) struct Places {
    pub(crate) staging: PathBuf,
    pub(crate) marker: PathBuf,
    pub(crate) pruning: PathBuf,
    /// `<share_root>/.sharelink/displaced/<share path>`, relative to the
    /// share root: keyed like the lock, so that only the lock's holder
    /// writes or clears it (two services with the same app path and other
    /// share paths must not clear each other's copies).
    pub(crate) displaced: PathBuf,
}

impl Places {
    pub(crate) fn new(cfg: &Config, link: &Link) -> Places {
        Places {
            staging: names::sibling(&cfg.share_path(link), STAGING_SUFFIX, 0),
            marker: names::sibling(&cfg.app_path(link), MARKER_SUFFIX, 0),
            pruning: names::sibling(&cfg.app_path(link), PRUNING_SUFFIX, 0),
            displaced: Path::new(RESERVED_DIR).join(DISPLACED).join(&link.share),
        }
    }

    /// Look for leftovers (a few `lstat`s; only asked when the app path is
    /// still a directory or missing). The share side is looked at through
    /// directories opened from the share root without following symlinks.
    pub(crate) fn leftovers(&self, cfg: &Config, link: &Link) -> Leftovers {
        let root = Dir::open_path(&cfg.share_root).ok();
        let beneath = |rel: &Path| root.as_ref().and_then(|r| tree::open_beneath(r, rel).ok());
        let in_share = |dir: &Option<Dir>, name: &OsStr| {
            dir.as_ref()
                .is_some_and(|d| d.stat_at(name).ok().flatten().is_some())
        };
        let displacing = beneath(&self.displaced)
            .and_then(|d| d.list().ok())
            .is_some_and(|l| {
                l.iter()
                    .any(|(n, _)| n.as_encoded_bytes().ends_with(PARTIAL.as_bytes()))
            });
        let (parent_rel, name) = super::split_rel(&link.share);
        let staging = beneath(parent_rel).and_then(|p| {
            p.open_dir_path(&names::hidden(name, STAGING_SUFFIX, 0))
                .ok()
        });
        Leftovers {
            // After the commit only the journal stays, until the end.
            staging: in_share(&staging, OsStr::new(TREE)),
            displacing,
            committed: std::fs::symlink_metadata(&self.marker).is_ok(),
            journal: in_share(&staging, OsStr::new(JOURNAL)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The literal parts of the first column of docs/design.md's table of
    /// where things are: placeholders (`<name>`), references to an earlier
    /// row (`…staging`) and the dots around names left out.
    fn design_names() -> BTreeSet<String> {
        let doc = include_str!("../../../docs/design.md");
        let start = doc
            .find("### Where things are")
            .expect("design.md has the table of where things are");
        let mut names = BTreeSet::new();
        for line in doc[start..].lines().skip(4) {
            let Some(row) = line.strip_prefix("| `") else {
                break;
            };
            let path = &row[..row.find('`').expect("a path in backquotes")];
            for part in path.split('/') {
                if part.starts_with('…') {
                    continue;
                }
                // The literal pieces between placeholders.
                let mut pieces = vec![String::new()];
                let mut depth = 0;
                for ch in part.chars() {
                    match ch {
                        '<' => {
                            depth += 1;
                            pieces.push(String::new());
                        }
                        '>' => depth -= 1,
                        c if depth == 0 => pieces.last_mut().unwrap().push(c),
                        _ => {}
                    }
                }
                for lit in pieces.iter().flat_map(|p| p.split('.')) {
                    let lit = lit.trim_matches('-');
                    if !lit.is_empty() {
                        names.insert(lit.to_string());
                    }
                }
            }
        }
        names
    }

    #[test]
    fn design_lists_exactly_these_names() {
        let mut ours: BTreeSet<String> = ALL
            .iter()
            .map(|n| n.trim_matches('.').to_string())
            .collect();
        ours.insert(RESERVED_DIR.trim_matches('.').to_string());
        assert_eq!(design_names(), ours);
    }

    #[test]
    fn leftovers_say_what_the_next_run_finishes() {
        assert!(!Leftovers::default().any());
        let staging = Leftovers {
            staging: true,
            journal: true,
            ..Leftovers::default()
        };
        assert!(staging.any());
        assert!(staging.describe().contains("resumes it"));
        assert!(!staging.describe().contains("committed by a run"));
        let journal = Leftovers {
            journal: true,
            ..Leftovers::default()
        };
        assert!(journal
            .describe()
            .contains("committed by a run that did not finish"));
    }
}
