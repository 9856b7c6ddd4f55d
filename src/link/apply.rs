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
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
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
pub fn apply(cfg: &Config, owner: Option<Owner>) -> Result<()> {
    let mut first_err = None;
    // A cause shared by every link (the share refusing writes) is told in
    // full once.
    let mut told: Vec<String> = Vec::new();
    let locks = lock::lock_names(&cfg.share_root);
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
    locks: &lock::LockNames,
) -> Result<()> {
    signals::check_interrupt()?;
    let paths = Paths::new(cfg, link);
    let mut d = proceed(plan::decide(link, &paths, &obs?))?;
    if d.actions.is_empty() {
        lock::clear_stale(&cfg.share_root, &link.share, locks);
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
            lock = Some(Lock::acquire(&cfg.share_root, &link.share)?);
            d = decide(cfg, link, &paths)?;
            if d.actions.is_empty() {
                tracing::info!(link = %link.app.display(), state = d.state.name(), "already linked (by another sharelink while this one waited)");
                return Ok(());
            }
        }
        match execute(cfg, link, &paths, &d, lock.as_mut(), owner)? {
            Some(summary) => {
                if lock.is_none() {
                    lock::clear_stale(&cfg.share_root, &link.share, locks);
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
                let root = Dir::open(&cfg.share_root).ctx("open", &cfg.share_root)?;
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
                let root = Dir::open(&cfg.share_root).ctx("open", &cfg.share_root)?;
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
pub fn make_symlink(app: &Path, target: &Path) -> Result<()> {
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
