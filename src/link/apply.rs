//! Apply: carry out each link's plan. Actions that write into a share
//! target take the link's lock and re-plan under it, because another
//! replica may have done the work while we waited.

use std::fs;
use std::path::Path;

use crate::config::{Config, Link};
use crate::error::{Error, IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::{names, tree};
use crate::link::lock::{self, Lock};
use crate::link::migrate::{self, Outcome};
use crate::link::plan::{self, Action, Decision, Paths, State};
use crate::signals;

/// Who should own share directories that linking creates: the user the
/// pipeline runs as (`run --user` / `run.user`), so that it can write into
/// them after sharelink drops root. Migrated data keeps its own owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// What to do for a link that is not blocked.
struct Todo {
    state: State,
    actions: Vec<Action>,
}

/// Link every entry. A link that fails does not stop the others (each is
/// independent); the first error decides the exit code. A termination
/// signal stops at once, between steps.
///
/// Each link gets one INFO line saying what was done ("already linked"
/// when nothing was).
pub(crate) fn apply(cfg: &Config, owner: Option<Owner>) -> Result<()> {
    let mut first_err = None;
    // A cause shared by every link (the share refusing writes) is told in
    // full once.
    let mut told: Vec<String> = Vec::new();
    // Listed when a run that takes no lock first needs it (once per run),
    // not before a migration, which takes the lock and never reads it.
    let locks = std::cell::OnceCell::new();
    // Looked at all at once (on a network share, many at a time); a link
    // reached after earlier ones took a while is looked at again.
    let looked = std::time::Instant::now();
    let observed = plan::observe_all(cfg);
    for (link, obs) in cfg.links.iter().zip(observed) {
        let obs = if looked.elapsed() < std::time::Duration::from_secs(1) {
            obs
        } else {
            plan::observe(cfg, link, &Paths::new(cfg, link))
        };
        match apply_link(cfg, link, obs, owner, &locks) {
            Ok(()) => {}
            Err(e) if e.is_interrupted() => return Err(e),
            Err(e) => {
                let e = super::advice::explain(cfg, e);
                let text = e.to_string();
                if told.contains(&text) {
                    tracing::error!(link = %link.app.display(), "failed: the same error as above");
                } else {
                    tracing::error!(link = %link.app.display(), "{text}");
                    told.push(text);
                }
                first_err.get_or_insert(e);
            }
        }
    }
    // Each failing link has said why; the first one's code is the exit's.
    first_err.map_or(Ok(()), |e: Error| Err(Error::Reported(e.exit_code())))
}

fn decide(cfg: &Config, link: &Link, paths: &Paths) -> Result<Todo> {
    let obs = plan::observe(cfg, link, paths)?;
    proceed(plan::decide(link, paths, &obs))
}

/// A decision that blocks the link is its error (65).
fn proceed(d: Decision) -> Result<Todo> {
    match d {
        Decision::Blocked(why) => Err(Error::Unsafe(why)),
        Decision::Proceed { state, actions } => Ok(Todo { state, actions }),
    }
}

fn apply_link(
    cfg: &Config,
    link: &Link,
    obs: Result<plan::Observed>,
    owner: Option<Owner>,
    locks: &std::cell::OnceCell<lock::LockNames>,
) -> Result<()> {
    signals::check_interrupt()?;
    let paths = Paths::new(cfg, link);
    let obs = obs?;
    let mut d = proceed(plan::decide(link, &paths, &obs))?;
    if d.actions.is_empty() {
        lock::clear_stale(&cfg.share_root, &link.share, names(cfg, locks));
        // A run killed between making the symlink and forgetting the
        // migration left its marker.
        migrate::forget(cfg, link);
        tracing::info!(link = %link.app.display(), "already linked");
        return Ok(());
    }
    let mut lock = None;
    // A few rounds at most: each `Replan` means the share target gained
    // data from outside since we looked, which moves the plan forward.
    for _ in 0..3 {
        if lock.is_none() && d.actions.iter().any(Action::needs_lock) {
            let taken = Lock::acquire(&cfg.share_root, &link.share)?;
            // Taken at the first try with the app side as it was: the look
            // before is the plan (the share side is not looked at again,
            // a round trip per component on a network share; the migration
            // looks at the share target under the lock itself, and nothing
            // in the share is followed). Otherwise another sharelink may
            // have done the work while this one waited: look again.
            let again = !taken.taken_at_once() || !app_as_seen(&paths.app, &obs.app);
            lock = Some(taken);
            if again {
                d = decide(cfg, link, &paths)?;
                if d.actions.is_empty() {
                    tracing::info!(link = %link.app.display(), state = d.state.name(), "already linked (by another sharelink while this one waited)");
                    return Ok(());
                }
            }
        }
        match execute(cfg, link, &paths, &d, lock.as_mut(), owner)? {
            Some(summary) => {
                if lock.is_none() {
                    lock::clear_stale(&cfg.share_root, &link.share, names(cfg, locks));
                }
                // The state now, and the one it was found in.
                tracing::info!(link = %link.app.display(), state = "linked", was = d.state.name(), "{summary}");
                return Ok(());
            }
            None => d = decide(cfg, link, &paths)?,
        }
    }
    Err(Error::ShareKeepsChanging(format!(
        "{}: the share target keeps changing under sharelink; re-run when whatever writes there without sharelink is done",
        paths.share.display()
    )))
}

/// The lock directory's names, listed once per run.
fn names<'a>(cfg: &Config, locks: &'a std::cell::OnceCell<lock::LockNames>) -> &'a lock::LockNames {
    locks.get_or_init(|| lock::lock_names(&cfg.share_root))
}

/// Whether the app path is still what the look before the lock found (a
/// local look, no round trip to the share): the same symlink, still
/// missing, or still a directory.
fn app_as_seen(app: &Path, was: &plan::AppNode) -> bool {
    use plan::AppNode;
    match (fs::read_link(app), was) {
        (Ok(now), AppNode::Symlink(then)) => &now == then,
        (Err(e), AppNode::Missing) => e.kind() == std::io::ErrorKind::NotFound,
        (Err(e), AppNode::Dir) => {
            e.raw_os_error() == Some(libc::EINVAL)
                && fs::symlink_metadata(app).is_ok_and(|m| m.is_dir())
        }
        _ => false,
    }
}

/// Run the actions in order. `Ok(None)` asks for a re-plan.
fn execute(
    cfg: &Config,
    link: &Link,
    paths: &Paths,
    d: &Todo,
    mut lock: Option<&mut Lock>,
    owner: Option<Owner>,
) -> Result<Option<String>> {
    let mut done: Vec<String> = Vec::new();
    for action in &d.actions {
        signals::check_interrupt()?;
        match action {
            Action::CreateShareTarget => {
                let root = Dir::open_path(&cfg.share_root).ctx("open", &cfg.share_root)?;
                let made = tree::make_beneath(&root, &link.share, &cfg.share_root)?;
                if made.created {
                    give(&made.dir, &paths.share, owner);
                }
                done.push("created the share target".into());
            }
            Action::Migrate(_) => {
                let lock = lock.as_deref_mut().expect("migration runs under the lock");
                let out =
                    migrate::migrate(cfg, link, lock, cfg.migration.threads(&cfg.share_root))?;
                done.push(describe(&out, link, paths));
            }
            Action::CreateDirs(dirs) => {
                let root = Dir::open_path(&cfg.share_root).ctx("open", &cfg.share_root)?;
                let target = tree::open_beneath(&root, &link.share)
                    .map_err(|e| beneath_error(e, &paths.share))?;
                for dir in dirs {
                    let made = tree::make_beneath(&target, dir, &paths.share)?;
                    if made.created {
                        give(&made.dir, &paths.share.join(dir), owner);
                    }
                }
            }
            Action::Symlink => {
                make_symlink(&paths.app, &paths.share)?;
                migrate::forget(cfg, link);
                done.push("symlinked".into());
            }
            Action::ReplaceSymlink { was } => {
                tracing::warn!(link = %link.app.display(), was = %was.display(), "replacing a symlink that pointed elsewhere");
                make_symlink(&paths.app, &paths.share)?;
                done.push(format!("replaced the symlink to {}", was.display()));
            }
        }
    }
    // Dirs are idempotent mkdirs; a linked entry with dirs only created is
    // still worth a line.
    if done.is_empty() {
        done.push("created missing dirs".into());
    }
    Ok(Some(done.join(", ")))
}

/// Hand a directory we just created to the pipeline's user, through the
/// handle we made it with (its name may point elsewhere by now). A share
/// that refuses chown (SMB: owners come from the mount options) is fine.
fn give(dir: &Dir, path: &Path, owner: Option<Owner>) {
    if let Some(Owner { uid, gid }) = owner {
        if let Err(e) = dir.chown(uid, gid) {
            crate::debug!("chown of {} to the run user refused: {e}", path.display());
        }
    }
}

/// The share target could not be opened without following symlinks: a
/// symlink or a file put there since it was looked at.
fn beneath_error(e: std::io::Error, path: &Path) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV) => Error::Unsafe(format!(
            "{} (or a directory above it in the share) changed into a symlink or file while sharelink linked it; sharelink never follows those. Replace it with a directory and re-run",
            path.display()
        )),
        _ => Error::io("open directory", path, e),
    }
}

fn describe(out: &Outcome, link: &Link, paths: &Paths) -> String {
    let c = &out.copied;
    use super::count;
    let mut s = format!(
        "migrated {}, {}, {}, {} into {}",
        count(c.files + c.resumed, "file", "files"),
        count(c.bytes + c.resumed_bytes, "byte", "bytes"),
        count(c.symlinks, "symlink", "symlinks"),
        count(c.dirs, "dir", "dirs"),
        paths.share.display()
    );
    copy_details(c, &mut s);
    outcome_details(out, &mut s);
    losses(out, link, paths, &mut s);
    if out.passes > 1 {
        s.push_str(&format!(
            "; {} passes (entries changed or appeared while copying)",
            out.passes
        ));
    }
    s
}

/// What the copy's counts add to [`describe`]'s line.
fn copy_details(c: &crate::link::migrate::copy::Stats, s: &mut String) {
    use super::count;
    use std::fmt::Write;
    if c.resumed > 0 {
        let _ = write!(
            s,
            " ({}, {} of them copied by an interrupted earlier run)",
            count(c.resumed, "file", "files"),
            count(c.resumed_bytes, "byte", "bytes")
        );
    }
    if c.hard_links > 0 {
        let _ = write!(
            s,
            ", {} kept",
            count(c.hard_links, "hard link", "hard links")
        );
    }
    if c.special > 0 {
        let _ = write!(s, ", {}", count(c.special, "special file", "special files"));
    }
}

/// What was found on the share, replaced and set aside, for [`describe`].
fn outcome_details(out: &Outcome, s: &mut String) {
    use super::count;
    use std::fmt::Write;
    if out.identical > 0 {
        let _ = write!(
            s,
            "; {} already on the share with the same content",
            count(out.identical, "app file was", "app files were")
        );
    }
    if out.replaced > 0 {
        let _ = write!(
            s,
            "; {} changed during the migration and copied again",
            count(out.replaced, "file", "files")
        );
    }
    if let Some(to) = &out.displaced_to {
        let n = out.displaced.files + out.displaced.symlinks + out.displaced.special;
        if n > 0 {
            let _ = write!(
                s,
                "; set aside {} in {}",
                count(n, "entry", "entries"),
                to.display()
            );
        }
        if out.already_displaced > 0 {
            let _ = write!(
                s,
                "; {} already set aside by an earlier run",
                count(out.already_displaced, "entry was", "entries were")
            );
        }
    }
}

/// What the share could not hold: warned once per link and kind, and
/// added to [`describe`]'s line.
fn losses(out: &Outcome, link: &Link, paths: &Paths, s: &mut String) {
    use super::count;
    for &(loss, n) in &out.losses {
        // Once per link and kind: the share could not hold this.
        tracing::warn!(
            link = %link.app.display(),
            share = %paths.share.display(),
            entries = n,
            kind = loss.key(),
            "the share refused this for {}: {}; the data itself is copied",
            count(n, "entry", "entries"),
            loss.fallback()
        );
        s.push_str(&format!(
            "; {} lost {}",
            count(n, "entry", "entries"),
            loss.key()
        ));
    }
}

/// Make `app` an absolute symlink to `target` atomically: create it under
/// a temporary name beside `app`, then rename it into place. An empty
/// directory at `app` (a migrated data directory) is removed first; the
/// rename never replaces anything that appeared there meanwhile, and a
/// symlink pointing elsewhere is replaced in one step.
fn make_symlink(app: &Path, target: &Path) -> Result<()> {
    let parent_path = app.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent_path).ctx("create directory", parent_path)?;
    let parent = Dir::open(parent_path).ctx("open", parent_path)?;
    let name = app.file_name().unwrap_or_default();
    // Room for ".<pid>" (u32: at most 10 digits) within NAME_MAX.
    let prefix = names::hidden(name, "sharelink-link", 11);
    let mut tmp = prefix.clone();
    tmp.push(format!(".{}", std::process::id()));
    sweep_temp_links(&parent, &prefix);
    let tmp_path = parent_path.join(&tmp);
    let _ = parent.unlink(&tmp);
    parent
        .symlink(target.as_os_str(), &tmp)
        .ctx("create symlink", &tmp_path)?;
    failpoint::hit(Failpoint::SwapTemp);
    let result = swap(&parent, &tmp, name, app);
    if result.is_err() {
        let _ = parent.unlink(&tmp);
    }
    result
}

fn swap(parent: &Dir, tmp: &std::ffi::OsStr, name: &std::ffi::OsStr, app: &Path) -> Result<()> {
    let kind = parent.stat_at(name).ctx("inspect", app)?.map(|m| m.kind);
    match kind {
        Some(crate::fs::meta::Kind::Symlink) => {
            return parent.rename(tmp, parent, name).ctx("rename symlink over", app)
        }
        Some(crate::fs::meta::Kind::Dir) => match parent.rmdir(name) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                return Err(Error::AppBusy(format!(
                    "{} is not empty: something was written into it while it was linked; re-run `sharelink link` to migrate it",
                    app.display()
                )))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io("remove empty directory", app, e)),
        },
        Some(_) => {
            return Err(Error::Unsafe(format!(
                "{} appeared as a file while sharelink linked it; move it away and re-run",
                app.display()
            )))
        }
        None => {}
    }
    match parent.rename_noreplace(tmp, parent, name) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
            Err(Error::AppBusy(format!(
                "{} reappeared while sharelink linked it; re-run `sharelink link`",
                app.display()
            )))
        }
        Err(e) => Err(Error::io("rename symlink into place at", app, e)),
    }
}

/// Remove temporary symlinks (`.<name>.sharelink-link.<pid>`) of runs
/// that died between creating and renaming them.
fn sweep_temp_links(parent: &Dir, prefix: &std::ffi::OsStr) {
    let mut stem = prefix.as_encoded_bytes().to_vec();
    stem.push(b'.');
    let Ok(entries) = parent.list() else {
        return;
    };
    for (name, kind) in entries {
        let Some(pid) = name.as_encoded_bytes().strip_prefix(stem.as_slice()) else {
            continue;
        };
        let alive = std::str::from_utf8(pid)
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists());
        if !alive && kind.is_none_or(|k| k == crate::fs::meta::Kind::Symlink) {
            let _ = parent.unlink(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Overrides};
    use crate::exit_code::ExitCode;
    use crate::link::plan::AppNode;
    use crate::link::plan::MigrationPlan;
    use std::os::unix::fs::symlink;

    /// A link `data` (share `data`, `dirs` `logs` and `cache/x`), app and
    /// share roots in `t`.
    fn config(t: &Path) -> Config {
        let (app, share) = (t.join("app"), t.join("share"));
        fs::create_dir_all(&app).unwrap();
        fs::create_dir_all(&share).unwrap();
        let text = format!(
            "app_root = \"{}\"\nshare_root = \"{}\"\nrequire_mount = false\n[links]\n\"data\" = {{ share = \"data\", dirs = [\"logs\", \"cache/x\"] }}\n",
            app.display(),
            share.display()
        );
        config::parse(&text, Path::new("t.toml"), &Overrides::default()).unwrap()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn an_unlinked_link_gets_its_share_target_and_dirs_before_the_symlink() {
        let t = tempfile::tempdir().unwrap();
        let cfg = config(t.path());
        let paths = Paths::new(&cfg, &cfg.links[0]);
        let d = decide(&cfg, &cfg.links[0], &paths).unwrap();
        assert_eq!(
            d.actions,
            vec![
                Action::CreateShareTarget,
                Action::CreateDirs(vec!["logs".into(), "cache/x".into()]),
                Action::Symlink
            ]
        );
        apply(&cfg, None).unwrap();
        assert_eq!(fs::read_link(&paths.app).unwrap(), paths.share);
        assert!(paths.share.join("logs").is_dir());
        assert!(paths.share.join("cache/x").is_dir());
        // The lock taken to create the share target is gone.
        let locks = t.path().join("share/.sharelink/locks");
        assert!(!locks.exists() || names_in(&locks).is_empty());
        // Again: nothing left to do.
        let d = decide(&cfg, &cfg.links[0], &paths).unwrap();
        assert_eq!(d.state, State::Linked);
        assert!(d.actions.is_empty());
        apply(&cfg, None).unwrap();
        assert_eq!(fs::read_link(&paths.app).unwrap(), paths.share);
    }

    #[test]
    fn a_refused_share_target_leaves_the_app_directory_alone() {
        let t = tempfile::tempdir().unwrap();
        let cfg = config(t.path());
        let paths = Paths::new(&cfg, &cfg.links[0]);
        fs::create_dir_all(&paths.app).unwrap();
        fs::write(paths.app.join("baked"), "data").unwrap();
        fs::write(&paths.share, "a file where the share directory belongs").unwrap();
        let err = apply(&cfg, None).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::Unsafe);
        assert!(paths.app.is_dir());
        assert_eq!(fs::read(paths.app.join("baked")).unwrap(), b"data");
        assert_eq!(
            fs::read(&paths.share).unwrap(),
            b"a file where the share directory belongs"
        );
    }

    #[test]
    fn only_actions_that_write_into_the_share_target_take_the_lock() {
        assert!(Action::Migrate(MigrationPlan::IntoEmpty).needs_lock());
        assert!(Action::CreateShareTarget.needs_lock());
        assert!(!Action::CreateDirs(vec!["x".into()]).needs_lock());
        assert!(!Action::Symlink.needs_lock());
        assert!(!Action::ReplaceSymlink { was: "/x".into() }.needs_lock());
    }

    #[test]
    fn a_blocked_decision_is_the_refusal() {
        let err = proceed(Decision::Blocked("why".into())).err().unwrap();
        assert_eq!(err.exit_code(), ExitCode::Unsafe);
        assert_eq!(err.to_string(), "why");
        let todo = proceed(Decision::Proceed {
            state: State::Unlinked,
            actions: vec![Action::Symlink],
        })
        .unwrap();
        assert_eq!(todo.state, State::Unlinked);
        assert_eq!(todo.actions, vec![Action::Symlink]);
    }

    #[test]
    fn a_share_target_that_turned_into_a_symlink_or_file_is_refused() {
        let p = Path::new("/share/data");
        for errno in [libc::ELOOP, libc::ENOTDIR, libc::EXDEV] {
            let e = beneath_error(std::io::Error::from_raw_os_error(errno), p);
            assert_eq!(e.exit_code(), ExitCode::Unsafe, "errno {errno}");
        }
        let e = beneath_error(std::io::Error::from_raw_os_error(libc::EACCES), p);
        assert_ne!(e.exit_code(), ExitCode::Unsafe);
    }

    #[test]
    fn the_symlink_replaces_an_empty_directory_or_another_symlink_only() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("share/data");
        // Missing, parents too: made.
        let app = t.path().join("deep/er/app");
        make_symlink(&app, &target).unwrap();
        assert_eq!(fs::read_link(&app).unwrap(), target);
        // Pointing elsewhere: replaced.
        let other = t.path().join("other");
        make_symlink(&other, Path::new("/elsewhere")).unwrap();
        make_symlink(&other, &target).unwrap();
        assert_eq!(fs::read_link(&other).unwrap(), target);
        // An empty directory (migrated): replaced.
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        make_symlink(&empty, &target).unwrap();
        assert_eq!(fs::read_link(&empty).unwrap(), target);
        // A directory something wrote into meanwhile: kept.
        let full = t.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("new"), "x").unwrap();
        let err = make_symlink(&full, &target).unwrap_err();
        assert!(matches!(err, Error::AppBusy(_)), "{err}");
        assert_eq!(fs::read(full.join("new")).unwrap(), b"x");
        // A file: kept (65).
        let file = t.path().join("file");
        fs::write(&file, "y").unwrap();
        let err = make_symlink(&file, &target).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::Unsafe);
        assert_eq!(fs::read(&file).unwrap(), b"y");
        // No temporary symlink left by any of them.
        let left: Vec<String> = names_in(t.path())
            .into_iter()
            .filter(|n| n.contains("sharelink-link"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn temporary_symlinks_of_dead_runs_are_swept_and_a_live_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let app = t.path().join("app");
        let prefix = names::hidden(std::ffi::OsStr::new("app"), "sharelink-link", 11);
        let temp = |pid: u32| {
            let mut n = prefix.clone();
            n.push(format!(".{pid}"));
            t.path().join(n)
        };
        // No process has a pid above the kernel's limit (4194304 at most).
        let dead = temp(4_194_305);
        // PID 1 lives as long as the machine.
        let live = temp(1);
        symlink("/x", &dead).unwrap();
        symlink("/x", &live).unwrap();
        make_symlink(&app, Path::new("/share/app")).unwrap();
        assert!(
            fs::symlink_metadata(&dead).is_err(),
            "the dead run's is swept"
        );
        assert!(fs::symlink_metadata(&live).is_ok(), "the live run's stays");
    }

    #[test]
    fn the_app_side_is_as_seen_only_if_still_that_kind_and_symlink() {
        let t = tempfile::tempdir().unwrap();
        let app = t.path().join("data");
        assert!(app_as_seen(&app, &AppNode::Missing));
        assert!(!app_as_seen(&app, &AppNode::Dir));
        fs::create_dir(&app).unwrap();
        assert!(app_as_seen(&app, &AppNode::Dir));
        assert!(!app_as_seen(&app, &AppNode::Missing));
        // Another sharelink linked it meanwhile.
        fs::remove_dir(&app).unwrap();
        std::os::unix::fs::symlink("/share/data", &app).unwrap();
        assert!(!app_as_seen(&app, &AppNode::Dir));
        assert!(app_as_seen(&app, &AppNode::Symlink("/share/data".into())));
        assert!(!app_as_seen(&app, &AppNode::Symlink("/elsewhere".into())));
        // A symlink to a directory is no directory.
        fs::remove_file(&app).unwrap();
        std::os::unix::fs::symlink(t.path(), &app).unwrap();
        assert!(!app_as_seen(&app, &AppNode::Dir));
        fs::remove_file(&app).unwrap();
        fs::write(&app, "").unwrap();
        assert!(!app_as_seen(&app, &AppNode::Dir));
        assert!(!app_as_seen(&app, &AppNode::Other("file")));
    }
}
