//! Plan: look at the filesystem once per link ([`mod@observe`]), then decide
//! what to do ([`decide`], pure, tested without disks). `link --dry-run`
//! prints the plan, `status` reports the states (see [`super::status`]),
//! `link`/`run` apply it.

use std::fmt;
use std::path::PathBuf;

use crate::config::{Config, Link, MigrateMode};
use crate::error::{Error, ExitCode, Result};
use crate::fs::share::ShareNode;
use crate::link::advice;
use crate::link::migrate::Leftovers;
use crate::link::target;

mod observe;
pub(crate) use observe::{observe, observe_all};

/// What the app path is (never followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppNode {
    Missing,
    Symlink(PathBuf),
    /// A real directory: baked data (maybe none) to migrate.
    Dir,
    /// A regular file or other non-directory: not ours to touch.
    Other(&'static str),
    /// A directory that is, or holds, a mount point (a volume): it cannot
    /// be moved or replaced by a symlink, and emptying it is not ours to do.
    HoldsMount(PathBuf),
    /// A directory that is one with the share (a bind mount or a symlink
    /// joins them): it is, holds or lies inside this share directory. A
    /// migration would move the data onto itself and delete it.
    JoinedWithShare(PathBuf),
}

/// Everything [`decide`] needs to know about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) app: AppNode,
    pub(crate) share: ShareNode,
    /// `dirs` entries missing under the share target.
    pub(crate) missing_dirs: Vec<PathBuf>,
    /// A `dirs` entry (or a component of it) that is not a directory.
    pub(crate) bad_dir: Option<ShareNode>,
    /// What an interrupted migration left (only looked for when the app
    /// path is a directory or missing).
    pub(crate) leftovers: Leftovers,
}

/// How baked data gets into the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MigrationPlan {
    /// Share target missing or empty: the whole tree moves in (resuming
    /// the copy an interrupted run left).
    IntoEmpty,
    /// The share holds data: entries are compared by content; identical
    /// ones are dropped from the app side, different ones set aside, and
    /// ones the share lacks copied in (`merge`) or set aside (`if-empty`).
    Compare(MigrateMode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Move the app directory's tree into the share; the app directory is
    /// left empty.
    Migrate(MigrationPlan),
    /// Create the share target (and its parents).
    CreateShareTarget,
    /// Create these `dirs` under the share target.
    CreateDirs(Vec<PathBuf>),
    /// Create the symlink (and the app path's parents).
    Symlink,
    /// Replace a symlink that points elsewhere.
    ReplaceSymlink { was: PathBuf },
}

impl Action {
    /// Actions that write into the share target take the link's lock.
    pub(crate) fn needs_lock(&self) -> bool {
        matches!(self, Action::Migrate(_) | Action::CreateShareTarget)
    }
}

/// A link's state as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// The right symlink to an existing share directory with its `dirs`.
    Linked,
    /// The right symlink, but some `dirs` are missing.
    DirsMissing,
    /// The right symlink, but the share target is missing.
    ShareMissing,
    /// No app path yet.
    Unlinked,
    /// A symlink pointing elsewhere.
    WrongSymlink,
    /// A real directory (baked data) still to be moved into the share.
    NeedsMigration,
    /// An interrupted migration left work for the next run to finish.
    Interrupted,
    /// Another sharelink holds the link's lock and is migrating it now.
    Migrating,
    /// Something sharelink must not touch (exit 65 on `link`).
    Blocked,
    /// The share is not mounted or not there.
    ShareUnavailable,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Linked => "linked",
            State::DirsMissing => "dirs-missing",
            State::ShareMissing => "share-missing",
            State::Unlinked => "unlinked",
            State::WrongSymlink => "wrong-symlink",
            State::NeedsMigration => "needs-migration",
            State::Interrupted => "interrupted",
            State::Migrating => "migrating",
            State::Blocked => "blocked",
            State::ShareUnavailable => "share-unavailable",
        }
    }
}

/// The decision for one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Something sharelink must not touch, and why (exit 65 on `link`).
    Blocked(String),
    /// The link's state and what to do, in order (nothing when linked).
    Proceed { state: State, actions: Vec<Action> },
}

impl Decision {
    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        match self {
            Decision::Blocked(_) => State::Blocked,
            Decision::Proceed { state, .. } => *state,
        }
    }

    #[cfg(test)]
    pub(crate) fn actions(&self) -> &[Action] {
        match self {
            Decision::Blocked(_) => &[],
            Decision::Proceed { actions, .. } => actions,
        }
    }

    /// The error `link` exits with when the link is blocked (65).
    pub(crate) fn refusal(&self) -> Option<Error> {
        match self {
            Decision::Blocked(why) => Some(Error::Unsafe(why.clone())),
            Decision::Proceed { .. } => None,
        }
    }
}

/// Where a link's pieces live on disk.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) app: PathBuf,
    pub(crate) share: PathBuf,
}

impl Paths {
    pub(crate) fn new(cfg: &Config, link: &Link) -> Paths {
        Paths {
            app: cfg.app_path(link),
            share: cfg.share_path(link),
        }
    }
}

/// Decide what to do with one link. Pure: the rules of docs/design.md's
/// "Linking" section ("Per state"), row by row.
pub(crate) fn decide(link: &Link, paths: &Paths, obs: &Observed) -> Decision {
    if let Some(why) = refusal(paths, obs) {
        return Decision::Blocked(why);
    }
    let share_missing = obs.share == ShareNode::Missing;
    let share_empty = target::into_empty(&obs.share);
    let mut actions = Vec::new();
    // Execution order: share side first, the symlink last, so the link
    // never points at a share directory that is not ready.
    let (mut state, link_action) = match &obs.app {
        AppNode::Symlink(t) if t == &paths.share => {
            let state = if share_missing {
                State::ShareMissing
            } else if obs.missing_dirs.is_empty() {
                State::Linked
            } else {
                State::DirsMissing
            };
            (state, None)
        }
        AppNode::Symlink(t) => (
            State::WrongSymlink,
            Some(Action::ReplaceSymlink { was: t.clone() }),
        ),
        AppNode::Missing => (State::Unlinked, Some(Action::Symlink)),
        AppNode::Dir => {
            let how = if share_empty {
                MigrationPlan::IntoEmpty
            } else {
                MigrationPlan::Compare(link.migrate)
            };
            actions.push(Action::Migrate(how));
            (State::NeedsMigration, Some(Action::Symlink))
        }
        AppNode::Other(_) | AppNode::HoldsMount(_) | AppNode::JoinedWithShare(_) => {
            unreachable!("refused above")
        }
    };
    if share_missing && !matches!(obs.app, AppNode::Dir) {
        actions.push(Action::CreateShareTarget);
    }
    // A migration replaces the share target's tree (an only-empty-dirs
    // target is removed at commit), so after one every `dirs` entry is
    // made again; mkdir of an existing one is a no-op.
    let dirs = if matches!(obs.app, AppNode::Dir) {
        &link.dirs
    } else {
        &obs.missing_dirs
    };
    if !dirs.is_empty() {
        actions.push(Action::CreateDirs(dirs.clone()));
    }
    actions.extend(link_action);
    if obs.leftovers.any() && state != State::Linked {
        state = State::Interrupted;
    }
    Decision::Proceed { state, actions }
}

/// The rows that refuse, whatever else is true: something sharelink must
/// not touch where the data directory, the share target or a `dirs` entry
/// belongs.
fn refusal(paths: &Paths, obs: &Observed) -> Option<String> {
    if let AppNode::Other(kind) = obs.app {
        return Some(format!(
            "{} is a {kind} where the data directory belongs; sharelink leaves it alone. Move it away and re-run",
            paths.app.display()
        ));
    }
    if let AppNode::JoinedWithShare(at) = &obs.app {
        return Some(format!(
            "{} and the share directory {} are one directory (a bind mount or a symlink joins them); moving the data into the share would move it onto itself. Mount the share only at share_root, not over the app, and re-run",
            paths.app.display(),
            at.display()
        ));
    }
    if let AppNode::HoldsMount(at) = &obs.app {
        return Some(format!(
            "{} is a mount point inside the data directory {}; sharelink cannot move a mount into the share or replace it with a symlink. Unmount it (drop the volume) and re-run",
            at.display(),
            paths.app.display()
        ));
    }
    if let Some(why) = target::refusal(&obs.share) {
        return Some(why);
    }
    match &obs.bad_dir {
        Some(ShareNode::Symlink { at }) => Some(advice::unsafe_symlink(at).to_string()),
        Some(ShareNode::NotDir { at, kind }) => Some(format!(
            "{} is a {kind} where a directory from `dirs` belongs; move it away and re-run",
            at.display()
        )),
        _ => None,
    }
}

/// The plan for every link, in config order.
pub(crate) struct Plan<'a> {
    pub(crate) links: Vec<LinkPlan<'a>>,
}

/// One link's plan. An error observing the link is kept with it.
pub(crate) struct LinkPlan<'a> {
    pub(crate) link: &'a Link,
    pub(crate) paths: Paths,
    pub(crate) decision: Result<Decision>,
}

/// Observe and decide every link.
pub(crate) fn plan(cfg: &Config) -> Plan<'_> {
    let links = observe_all(cfg)
        .into_iter()
        .zip(&cfg.links)
        .map(|(o, link)| {
            let paths = Paths::new(cfg, link);
            let decision = o.map(|o| decide(link, &paths, &o));
            LinkPlan {
                link,
                paths,
                decision,
            }
        })
        .collect();
    Plan { links }
}

impl Plan<'_> {
    /// The code `link` would exit with: the first refusal's or error's.
    pub(crate) fn exit_code(&self) -> ExitCode {
        self.links
            .iter()
            .find_map(|l| match &l.decision {
                Err(e) => Some(e.exit_code()),
                Ok(d) => d.refusal().map(|e| e.exit_code()),
            })
            .unwrap_or(ExitCode::Ok)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Migrate(MigrationPlan::IntoEmpty) => f.write_str(
                "move the baked directory's tree into the share target",
            ),
            Action::Migrate(MigrationPlan::Compare(MigrateMode::IfEmpty)) => f.write_str(
                "compare with the share's data by content: drop identical files from the app side; \
                 set aside app files the share lacks or holds differently in .sharelink/displaced/",
            ),
            Action::Migrate(MigrationPlan::Compare(MigrateMode::Merge)) => f.write_str(
                "compare with the share's data by content: drop identical files from the app side; \
                 copy in app files the share lacks (never overwriting); set aside ones it holds differently",
            ),
            Action::Migrate(MigrationPlan::Compare(MigrateMode::ImageWins)) => f.write_str(
                "compare with the share's data by content (migrate = \"image-wins\"): drop identical files from the app side; \
                 copy in app files the share lacks; replace the share's files that differ from the image's, \
                 setting the share's version aside in .sharelink/displaced/ first \
                 (a share directory where the image has a file stays: that app file is set aside)",
            ),
            Action::CreateShareTarget => f.write_str("create the share target"),
            Action::CreateDirs(d) => {
                let names: Vec<_> = d.iter().map(|p| p.display().to_string()).collect();
                write!(f, "create dirs {}", names.join(", "))
            }
            Action::Symlink => f.write_str("make the symlink"),
            Action::ReplaceSymlink { was } => {
                write!(f, "replace the symlink (now -> {})", was.display())
            }
        }
    }
}

/// `keep` as the plan says it: "the 5 most recent", "those younger than 30d".
fn keep_words(k: crate::config::Keep) -> String {
    match k {
        crate::config::Keep::Count(_) => format!("the {k} most recent"),
        crate::config::Keep::Age(_) => format!("those younger than {k}"),
    }
}

impl fmt::Display for Plan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.links {
            let paths = &l.paths;
            write!(f, "{} -> {}: ", paths.app.display(), paths.share.display())?;
            match &l.decision {
                Err(e) => writeln!(f, "error: {e}")?,
                Ok(Decision::Blocked(why)) => writeln!(f, "{}: {why}", State::Blocked.name())?,
                Ok(Decision::Proceed { state, actions }) if actions.is_empty() => {
                    writeln!(f, "{}, nothing to do", state.name())?
                }
                Ok(Decision::Proceed { state, actions }) => {
                    writeln!(f, "{}", state.name())?;
                    for a in actions {
                        writeln!(f, "  - {a}")?;
                    }
                    if let (Some(k), true) = (
                        l.link.keep,
                        actions.iter().any(|a| matches!(a, Action::Migrate(_))),
                    ) {
                        writeln!(
                            f,
                            "  - then remove set-aside copies of this link other than {}",
                            keep_words(k)
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn paths_for(app: &Path, share: &Path) -> Paths {
        Paths {
            app: app.to_path_buf(),
            share: share.to_path_buf(),
        }
    }

    fn link(migrate: MigrateMode) -> Link {
        Link {
            app: "data".into(),
            share: "data".into(),
            dirs: vec!["in".into()],
            migrate,
            keep: None,
            line: None,
        }
    }
    fn paths() -> Paths {
        paths_for(Path::new("/app/data"), Path::new("/s/data"))
    }
    fn obs(app: AppNode, share: ShareNode) -> Observed {
        let missing_dirs = if matches!(share, ShareNode::Dir { .. }) {
            vec![]
        } else {
            vec!["in".into()]
        };
        Observed {
            app,
            share,
            missing_dirs,
            bad_dir: None,
            leftovers: Leftovers::default(),
        }
    }
    fn d(o: &Observed) -> Decision {
        decide(&link(MigrateMode::IfEmpty), &paths(), o)
    }
    fn blocked_why(d: &Decision) -> &str {
        match d {
            Decision::Blocked(why) => why,
            other => panic!("not blocked: {other:?}"),
        }
    }
    const FULL: ShareNode = ShareNode::Dir { empty: false };
    const EMPTY: ShareNode = ShareNode::Dir { empty: true };
    fn right() -> AppNode {
        AppNode::Symlink("/s/data".into())
    }

    #[test]
    fn missing_app() {
        let x = d(&obs(AppNode::Missing, ShareNode::Missing));
        assert_eq!(x.state(), State::Unlinked);
        assert_eq!(
            x.actions(),
            [
                Action::CreateShareTarget,
                Action::CreateDirs(vec!["in".into()]),
                Action::Symlink
            ]
        );
        let x = d(&obs(AppNode::Missing, FULL));
        assert_eq!(x.actions(), [Action::Symlink]);
    }

    #[test]
    fn right_symlink_is_a_no_op() {
        let x = d(&obs(right(), FULL));
        assert_eq!((x.state(), x.actions().len()), (State::Linked, 0));
        let x = d(&obs(right(), ShareNode::Missing));
        assert_eq!(x.state(), State::ShareMissing);
        assert_eq!(
            x.actions(),
            [
                Action::CreateShareTarget,
                Action::CreateDirs(vec!["in".into()])
            ]
        );
        let mut o = obs(right(), FULL);
        o.missing_dirs = vec!["in".into()];
        assert_eq!(d(&o).state(), State::DirsMissing);
    }

    #[test]
    fn wrong_symlink_replaced() {
        let x = d(&obs(AppNode::Symlink("/elsewhere".into()), FULL));
        assert_eq!(x.state(), State::WrongSymlink);
        assert_eq!(
            x.actions(),
            [Action::ReplaceSymlink {
                was: "/elsewhere".into()
            }]
        );
        // A relative symlink to the same place is still not the absolute one wanted.
        let x = d(&obs(AppNode::Symlink("../s/data".into()), FULL));
        assert_eq!(x.state(), State::WrongSymlink);
    }

    #[test]
    fn directories_migrate_by_mode() {
        for share in [ShareNode::Missing, EMPTY] {
            let x = d(&obs(AppNode::Dir, share));
            assert_eq!(x.actions()[0], Action::Migrate(MigrationPlan::IntoEmpty));
            assert_eq!(x.actions().last(), Some(&Action::Symlink));
        }
        let x = d(&obs(AppNode::Dir, FULL));
        let all_dirs = Action::CreateDirs(vec!["in".into()]);
        assert_eq!(
            x.actions(),
            [
                Action::Migrate(MigrationPlan::Compare(MigrateMode::IfEmpty)),
                all_dirs.clone(),
                Action::Symlink
            ]
        );
        let x = decide(
            &link(MigrateMode::Merge),
            &paths(),
            &obs(AppNode::Dir, FULL),
        );
        assert_eq!(
            x.actions(),
            [
                Action::Migrate(MigrationPlan::Compare(MigrateMode::Merge)),
                all_dirs,
                Action::Symlink
            ]
        );
        assert_eq!(x.state(), State::NeedsMigration);
        assert!(x.actions()[0].needs_lock());
    }

    #[test]
    fn refusals() {
        let x = d(&obs(AppNode::Other("regular file"), FULL));
        assert_eq!(x.state(), State::Blocked);
        assert!(blocked_why(&x).contains("/app/data is a regular file"));
        assert!(x.actions().is_empty());
        let x = d(&obs(
            AppNode::Missing,
            ShareNode::Symlink {
                at: "/s/data".into(),
            },
        ));
        assert!(blocked_why(&x).contains("symlink inside the share"));
        let x = d(&obs(
            AppNode::Missing,
            ShareNode::NotDir {
                at: "/s/data".into(),
                kind: "regular file",
            },
        ));
        assert_eq!(x.state(), State::Blocked);
        let mut o = obs(right(), FULL);
        o.bad_dir = Some(ShareNode::Symlink {
            at: "/s/data/in".into(),
        });
        assert_eq!(d(&o).refusal().unwrap().exit_code(), ExitCode::Unsafe);
    }

    #[test]
    fn leftovers_show_as_interrupted() {
        let mut o = obs(AppNode::Dir, ShareNode::Missing);
        o.leftovers.staging = true;
        let x = d(&o);
        assert_eq!(x.state(), State::Interrupted);
        assert_eq!(x.actions()[0], Action::Migrate(MigrationPlan::IntoEmpty));
        // Committed by this container, app path already emptied: only the
        // symlink is left.
        let mut o = obs(AppNode::Missing, FULL);
        o.leftovers.committed = true;
        let x = d(&o);
        assert_eq!(
            (x.state(), x.actions().to_vec()),
            (State::Interrupted, vec![Action::Symlink])
        );
        // A linked entry is linked, whatever another container left.
        let mut o = obs(right(), FULL);
        o.leftovers.staging = true;
        assert_eq!(d(&o).state(), State::Linked);
    }
}
