//! `sharelink doctor`: what this share can and cannot do, measured, with
//! the fix for each problem.
//!
//! Safe in a running container: it writes only its own probe directory
//! under `<share_root>/.sharelink/` and removes it ([`probe`]), never
//! touches the app directories or the links' data, and gives up on a share
//! that does not answer within [`DEADLINE`] ([`share`] runs on a worker
//! thread). [`mount`] reads the mount table, [`capabilities`] probes what
//! the share keeps, [`runuser`] checks the run user as that user,
//! [`estimate`] prices a first start, [`advice`] names causes and fixes,
//! [`report`] prints.
//!
//! The binary has a size budget (1.3 MiB, tests/release/check.sh): doctor
//! formats numbers by integer arithmetic, builds JSON with pushes, and
//! marks its larger functions `#[inline(never)]`, which measured smaller
//! than letting LTO inline them into `cli::main`.

pub(crate) mod advice;
pub(crate) mod capabilities;
pub(crate) mod estimate;
pub(crate) mod mount;
pub(crate) mod probe;
pub(crate) mod report;
pub(crate) mod runuser;
pub(crate) mod share;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::error::{io_exit_code, ExitCode, Result};
use crate::init::user::{self, Credentials};
use crate::link::lock;
use crate::link::plan::State;
use advice::{Advice, Level};
use mount::MountEntry;
use report::{LinkReport, OtherMount, Report, RunUserReport};
use share::{ShareFacts, UserOutcome};

/// How long doctor waits for the share before reporting "no answer".
const DEADLINE: Duration = Duration::from_secs(5);

/// The report and the exit code (0, 65, 69, 73; a bad config or user is an
/// `Err` with 78).
pub(crate) fn doctor(cfg: &Config, user_spec: Option<&str>) -> Result<(Report, ExitCode)> {
    let creds = user_spec.map(user::resolve).transpose()?;
    // Reading the mount table never touches the share.
    let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    // A Mutex and Condvar rather than a channel: the pool already links
    // them in, and the binary has a size budget.
    let slot = Arc::new((Mutex::new(None), Condvar::new()));
    {
        let (cfg, creds, mi) = (cfg.clone(), creds.clone(), mountinfo.clone());
        let slot = Arc::clone(&slot);
        std::thread::spawn(move || {
            let facts = share::look(&cfg, creds.as_ref(), &mi);
            let (m, cv) = &*slot;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = Some(facts);
            cv.notify_all();
        });
    }
    let facts = {
        let (m, cv) = &*slot;
        let guard = m.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = cv
            .wait_timeout_while(guard, DEADLINE, |f| f.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.take()
    };
    if facts.is_none() {
        // The child checking as the run user may hang on the share too.
        let pid = runuser::CHILD.swap(0, Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: our own child, still unreaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(assemble(cfg, creds.as_ref(), &mountinfo, facts))
}

/// Advice and the exit code, as they accumulate.
struct Findings {
    advice: Vec<Advice>,
    code: ExitCode,
}

impl Findings {
    fn add(&mut self, level: Level, message: impl Into<String>) {
        let a = Advice::new(level, message);
        // Two links on one other mount give the same advice once.
        if !self.advice.contains(&a) {
            self.advice.push(a);
        }
    }

    /// Keep the exit code that says more: 69 over 73 over 74 over 0.
    fn fail(&mut self, code: ExitCode) {
        let rank = |c: ExitCode| match c {
            ExitCode::ShareUnavailable => 3,
            ExitCode::CannotWrite => 2,
            ExitCode::Ok => 0,
            _ => 1,
        };
        if rank(code) > rank(self.code) {
            self.code = code;
        }
    }
}

/// Everything the report says, and the exit code, from what was read.
#[inline(never)]
fn assemble(
    cfg: &Config,
    creds: Option<&Credentials>,
    mountinfo: &[u8],
    facts: Option<ShareFacts>,
) -> (Report, ExitCode) {
    let root_path = facts
        .as_ref()
        .and_then(|f| f.real_root.clone())
        .unwrap_or_else(|| cfg.share_root.clone());
    let mount = mount::mount_of(mountinfo, &root_path);
    let mounted = facts.as_ref().is_some_and(|f| f.real_root.is_some())
        && mount.as_ref().is_some_and(|m| m.mount_point == root_path);
    let mut f = Findings {
        advice: Vec::new(),
        code: ExitCode::Ok,
    };
    let mut report = Report {
        share_root: cfg.share_root.display().to_string(),
        mounted,
        mount,
        round_trip_ms: None,
        parallel_op: None,
        case_insensitive: false,
        supports: Default::default(),
        free_bytes: None,
        clock_skew_ms: None,
        run_user: None,
        links: Vec::new(),
        advice: Vec::new(),
    };
    let Some(facts) = facts else {
        f.add(
            Level::Error,
            format!(
                "{}: the share did not answer within {} s (a hung network mount?): nothing was \
             measured. Check the network to the file server and the mount (`mount`, `dmesg`)",
                cfg.share_root.display(),
                DEADLINE.as_secs()
            ),
        );
        f.fail(ExitCode::ShareUnavailable);
        report.advice = f.advice;
        return (report, f.code);
    };
    let run_user = creds.map(advice_user);
    share_findings(cfg, &facts, run_user.as_ref(), &mut report, &mut f);
    if let Some(c) = creds {
        let r = run_user_report(cfg, c, &facts, &mut f);
        report.run_user = Some(r);
    }
    let pace = match &facts.measured {
        Some(Ok(m)) => Some(estimate::Pace {
            round_trip_ms: m.round_trip_ms,
            parallel_op_ms: m.parallel_op_ms,
        }),
        _ => None,
    };
    report.links = links(cfg, &facts, mountinfo, report.mount.as_ref(), pace);
    link_findings(&report.links, &facts, run_user.as_ref(), &mut f);
    for l in &facts.left_behind {
        f.add(
            Level::Warn,
            format!("a probe entry could not be removed: {l}"),
        );
    }
    report.advice = f.advice;
    (report, f.code)
}

/// What the links need of the share: their own mounts' options, room
/// for the baked data, symlinks where the share has none.
#[inline(never)]
fn link_findings(
    links: &[LinkReport],
    facts: &ShareFacts,
    run_user: Option<&advice::RunUser>,
    f: &mut Findings,
) {
    for m in links
        .iter()
        .filter_map(|l| l.other_mount.as_ref().map(|o| &o.entry))
    {
        for a in advice::from_mount(m, run_user) {
            f.add(a.level, a.message);
        }
    }
    if let Some(Ok(m)) = &facts.measured {
        for l in links.iter().filter(|_| !m.supports.symlinks) {
            if let Some(n) = l.symlinks.filter(|&n| n > 0) {
                f.add(
                    Level::Error,
                    format!(
                        "{} holds {n} symlink(s) and the share cannot hold symlinks: `link` would \
                     stop at the first (exit 74). On SMB mount with `mfsymlinks`; else replace \
                     the symlinks in the image",
                        l.link
                    ),
                );
                f.fail(ExitCode::CannotWrite);
            }
        }
    }
    let needed: u64 = links.iter().filter_map(|l| l.bytes).sum();
    if let Some(free) = facts.free_bytes.filter(|&free| free < needed) {
        f.add(
            Level::Error,
            format!(
                "the share has {free} bytes free, the baked data still to move needs {needed}: \
             `link` would stop with exit 73 (no space). Grow the share (its quota)"
            ),
        );
        f.fail(ExitCode::CannotWrite);
    }
}

/// The mount guard, the mount's options and what the probes measured.
#[inline(never)]
fn share_findings(
    cfg: &Config,
    facts: &ShareFacts,
    run_user: Option<&advice::RunUser>,
    report: &mut Report,
    f: &mut Findings,
) {
    let root = cfg.share_root.display();
    if let Some(why) = &facts.unavailable {
        f.add(Level::Error, why.clone());
        f.fail(ExitCode::ShareUnavailable);
    } else if !report.mounted {
        f.add(
            Level::Warn,
            format!(
                "{root} is not a mount point (require_mount = false): data goes to the filesystem \
             below it, {}; keep require_mount = true wherever a file share is expected",
                report
                    .mount
                    .as_ref()
                    .map_or("unknown", |m| m.fs_type.as_str())
            ),
        );
    }
    if let Some(m) = report.mount.as_ref().filter(|_| report.mounted) {
        for a in advice::from_mount(m, run_user) {
            f.add(a.level, a.message);
        }
    }
    match &facts.measured {
        Some(Ok(m)) => {
            report.round_trip_ms = Some(m.round_trip_ms);
            report.parallel_op = Some((m.parallel_op_ms, m.in_flight));
            report.case_insensitive = m.case_insensitive;
            report.supports = m.supports;
            report.clock_skew_ms = m.clock_skew_ms;
            for a in advice::from_measured(m, report.mount.as_ref(), lock::lease()) {
                f.add(a.level, a.message);
            }
        }
        Some(Err(e)) => {
            f.add(
                Level::Error,
                format!(
                    "sharelink cannot write in {root}: {}: {} (it needs {root}/.sharelink for its \
                 locks)",
                    e.what, e.source
                ),
            );
            // A symlink or file planted where `.sharelink` belongs is
            // something sharelink must not touch, as `link` says too.
            f.fail(match e.source.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => ExitCode::Unsafe,
                _ => io_exit_code(&e.source),
            });
        }
        None => {}
    }
    report.free_bytes = facts.free_bytes;
    if facts.unavailable.is_none() && facts.free_bytes.is_none() {
        f.add(Level::Info, "the share reports no size: free space unknown");
    }
}

fn advice_user(c: &Credentials) -> advice::RunUser {
    advice::RunUser {
        name: user_name(c),
        uid: c.uid,
        gid: c.gid,
        groups: c.groups.clone(),
    }
}

fn user_name(c: &Credentials) -> String {
    c.name.clone().unwrap_or_else(|| c.uid.to_string())
}

/// The run user's line and the advice for each target it cannot write.
#[inline(never)]
fn run_user_report(
    cfg: &Config,
    c: &Credentials,
    facts: &ShareFacts,
    f: &mut Findings,
) -> RunUserReport {
    let name = user_name(c);
    for (link, outcome) in cfg.links.iter().zip(&facts.user) {
        let dir = cfg.share_path(link);
        match outcome {
            Some(UserOutcome::Checked(Some((step, e)))) => {
                f.add(
                    Level::Error,
                    format!(
                        "the run user {name} (uid {}, gid {}) cannot {}: {e}. Give it the \
                     directory (chown/chmod, or on SMB the mount's `uid=`/`gid=`/`dir_mode=`)",
                        c.uid,
                        c.gid,
                        step.describe(&dir)
                    ),
                );
                f.fail(ExitCode::CannotWrite);
            }
            Some(UserOutcome::NotChecked(e)) => f.add(
                Level::Warn,
                format!(
                    "could not check the run user {name} in {}: {e}",
                    dir.display()
                ),
            ),
            _ => {}
        }
    }
    let writable = facts.unavailable.is_none()
        && facts
            .user
            .iter()
            .all(|o| !matches!(o, Some(UserOutcome::Checked(Some(_)))));
    RunUserReport {
        user: name,
        uid: c.uid,
        writable,
    }
}

/// Per link: its state (from `status`), its mount when another, and for a
/// link still to migrate its baked tree and the first start's estimate.
#[inline(never)]
fn links(
    cfg: &Config,
    facts: &ShareFacts,
    mountinfo: &[u8],
    root_mount: Option<&MountEntry>,
    pace: Option<estimate::Pace>,
) -> Vec<LinkReport> {
    cfg.links
        .iter()
        .zip(&facts.status.links)
        .zip(&facts.other)
        .map(|((link, st), measured)| {
            let target: PathBuf = facts
                .real_root
                .as_deref()
                .unwrap_or(Path::new(&cfg.share_root))
                .join(&link.share);
            let other_mount = mount::mount_of(mountinfo, &target)
                .filter(|m| root_mount.is_none_or(|r| r.mount_point != m.mount_point))
                .map(|entry| OtherMount {
                    entry,
                    round_trip_ms: measured.and_then(|m| m.0),
                    free_bytes: measured.and_then(|m| m.1),
                });
            let to_move = matches!(
                st.state,
                State::NeedsMigration | State::Interrupted | State::Migrating
            );
            let tree = to_move
                .then(|| estimate::count(&cfg.app_path(link)).ok())
                .flatten();
            LinkReport {
                link: st.app.clone(),
                share: st.share.clone(),
                state: st.state.name(),
                files: tree.map(|t| t.files),
                bytes: tree.map(|t| t.bytes),
                symlinks: tree.map(|t| t.symlinks),
                estimated_seconds: tree.zip(pace).map(|(t, p)| estimate::seconds(&t, p)),
                other_mount,
            }
        })
        .collect()
}
