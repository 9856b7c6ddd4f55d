//! Apply: carry out each link's plan. Actions that write into a share
//! target take the link's lock and re-plan under it, because another
//! replica may have done the work while we waited.

use std::fs;
use std::io;
use std::path::Path;

use crate::config::{Config, Link};
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::fsutil;
use crate::lock::{self, Lock};
use crate::migrate::{self, Done, Outcome};
use crate::plan::{self, Action, Decision, Paths};
use crate::signals;

/// Who should own share directories that linking creates: the user the
/// pipeline runs as (`run --user` / `run.user`), so that it can write into
/// them after sharelink drops root. Migrated data keeps its own owners.
pub type Owner = Option<(u32, u32)>;

/// Link every entry. A link that fails does not stop the others (each is
/// independent); the first error decides the exit code. A termination
/// signal stops at once, between steps.
///
/// Each link gets one INFO line saying what was done ("already linked"
/// when nothing was).
pub fn apply(cfg: &Config, owner: Owner) -> Result<()> {
    let mut first_err = None;
    let locks = lock::lock_names(&cfg.share_root);
    for link in &cfg.links {
        match apply_link(cfg, link, owner, &locks) {
            Ok(()) => {}
            Err(e) if e.is_interrupted() => return Err(e),
            Err(e) => {
                tracing::error!(link = %link.app.display(), "{e}");
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn decide(cfg: &Config, link: &Link, paths: &Paths) -> Result<Decision> {
    let obs = plan::observe(cfg, link, paths)?;
    let d = plan::decide(link, paths, &obs);
    match plan::refusal_error(&d) {
        Some(e) => Err(e),
        None => Ok(d),
    }
}

fn apply_link(cfg: &Config, link: &Link, owner: Owner, locks: &lock::LockNames) -> Result<()> {
    signals::check_interrupt()?;
    let paths = Paths::new(cfg, link);
    let mut d = decide(cfg, link, &paths)?;
    if d.actions.is_empty() {
        lock::clear_stale(&cfg.share_root, &link.share, locks);
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
                tracing::info!(link = %link.app.display(), state = d.state.name(), "{summary}");
                return Ok(());
            }
            None => d = decide(cfg, link, &paths)?,
        }
    }
    Err(Error::Io {
        context: format!(
            "{}: the share target keeps changing under sharelink",
            paths.share.display()
        ),
        source: io::Error::from_raw_os_error(libc::EAGAIN),
    })
}

/// Run the actions in order. `Ok(None)` asks for a re-plan.
fn execute(
    cfg: &Config,
    link: &Link,
    paths: &Paths,
    d: &Decision,
    mut lock: Option<&mut Lock>,
    owner: Owner,
) -> Result<Option<String>> {
    let mut done: Vec<String> = Vec::new();
    for action in &d.actions {
        signals::check_interrupt()?;
        match action {
            Action::Recover => {
                fsutil::remove_tree(&paths.staging, &mut signals::check_interrupt)?;
                tracing::warn!(staging = %paths.staging.display(), "discarded the staging directory of an interrupted run");
                done.push("finished an interrupted run".into());
            }
            Action::CreateShareTarget => {
                if fsutil::ensure_dir_beneath(&cfg.share_root, &link.share)? {
                    give(&paths.share, owner);
                }
                done.push("created the share target".into());
            }
            Action::Migrate(how) => {
                let lock = lock.as_deref_mut().expect("migration runs under the lock");
                match migrate::migrate(cfg, link, paths, *how, lock)? {
                    Done::Replan => return Ok(None),
                    Done::Ok(out) => done.push(describe(&out, paths)),
                }
            }
            Action::CreateDirs(dirs) => {
                for dir in dirs {
                    if fsutil::ensure_dir_beneath(&paths.share, dir)? {
                        give(&paths.share.join(dir), owner);
                    }
                }
            }
            Action::Symlink => {
                make_symlink(&paths.app, &paths.share)?;
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

/// Hand a directory we just created to the pipeline's user. A share that
/// refuses chown (SMB: owners come from the mount options) is fine.
fn give(dir: &Path, owner: Owner) {
    if let Some((uid, gid)) = owner {
        if let Err(e) = std::os::unix::fs::lchown(dir, Some(uid), Some(gid)) {
            tracing::debug!(dir = %dir.display(), "chown to the run user refused: {e}");
        }
    }
}

fn describe(out: &Outcome, paths: &Paths) -> String {
    let mut s = format!(
        "migrated {} files, {} bytes, {} symlinks, {} dirs into {}",
        out.moved.files,
        out.moved.bytes,
        out.moved.symlinks,
        out.moved.dirs,
        paths.share.display()
    );
    if out.already_on_share > 0 {
        s.push_str(&format!(
            "; {} app files were already on the share (the share's kept)",
            out.already_on_share
        ));
    }
    if let Some(to) = &out.displaced_to {
        let n = out.displaced.files + out.displaced.symlinks;
        if n > 0 {
            tracing::warn!(
                files = n,
                to = %to.display(),
                "the share already held data: app-only files were set aside, not merged"
            );
            s.push_str(&format!("; displaced {n} files to {}", to.display()));
        } else {
            s.push_str(&format!(
                "; app-only files were already set aside in {}",
                to.display()
            ));
        }
    }
    let refused = out.moved.attrs_refused + out.displaced.attrs_refused;
    if refused > 0 {
        tracing::warn!(
            entries = refused,
            share = %paths.share.display(),
            "the share refused chmod/chown/utimes (SMB without unix extensions?); data copied, owners/modes/mtimes not kept"
        );
    }
    s
}

/// Make `app` an absolute symlink to `target` atomically: create it under a
/// temporary name beside `app`, then rename over. A leftover empty
/// directory at `app` (pruned, not yet replaced) is removed first.
pub fn make_symlink(app: &Path, target: &Path) -> Result<()> {
    let parent = app.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).ctx("create directory", parent)?;
    // Room for ".<pid>" (u32: at most 10 digits) within NAME_MAX.
    let prefix = fsutil::sibling_with_room(app, "sharelink-link", 11);
    let tmp = prefix.with_file_name(format!(
        "{}.{}",
        prefix.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    sweep_temp_links(parent, &prefix);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).ctx("create symlink", &tmp)?;
    failpoint::hit("swap.temp");
    let result = match fs::rename(&tmp, app) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST)
            ) =>
        {
            // An empty directory is the end of a prune; anything else is
            // new data that must not be thrown away: re-run to migrate it.
            match fs::remove_dir(app) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Err(Error::Io {
                    context: format!(
                        "{} became a non-empty directory while being linked; re-run sharelink link to migrate it",
                        app.display()
                    ),
                    source: e,
                }),
                r => r.and_then(|_| fs::rename(&tmp, app)).ctx("rename symlink over", app),
            }
        }
        r => r.ctx("rename symlink over", app),
    };
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Remove temporary symlinks (`.<name>.sharelink-link.<pid>`) of runs
/// that died between creating and renaming them.
fn sweep_temp_links(parent: &Path, prefix: &Path) {
    let Some(stem) = prefix
        .file_name()
        .map(|n| format!("{}.", n.to_string_lossy()))
    else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&stem)) else {
            continue;
        };
        let alive = pid.parse::<i32>().is_ok_and(|p| {
            p as u32 != std::process::id() && Path::new(&format!("/proc/{p}")).exists()
        });
        if !alive && e.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = fs::remove_file(e.path());
        }
    }
}
