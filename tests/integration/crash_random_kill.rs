//! Crash consistency: SIGKILL `sharelink link` at a random moment of a
//! migration, check the invariant right after the kill (every original
//! entry whole in the app directory, the share target or a complete
//! set-aside copy; the target all or nothing), re-run, and compare the
//! whole original tree with the share byte for byte.
//!
//! The source tree (≥2,000 files: mixed sizes, nested and empty
//! directories, symlinks) is built once on a tmpfs and used as the lower
//! layer of a fresh overlay per trial — the app directory is exactly a
//! container's baked image layer, where renaming gives EXDEV. The share is a
//! fresh tmpfs per trial. Kill delays are drawn uniformly in
//! [0, 1.2 × the measured duration of an uninterrupted migration], so kills
//! land across the whole migration (and a few after it).
//!
//! Trials rotate through the three migrations: into an empty share (the
//! common case), `merge` into a share that already holds part of the data
//! plus files of its own, and `if-empty` against such a share (app-only
//! files displaced).
//!
//! `SHARELINK_CRASH_TRIALS` (default 200) and `SHARELINK_TEST_SEED` repeat
//! or extend a run.

use crate::support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Node, Tree};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    IntoEmpty,
    Merge,
    KeepShare,
}

impl Mode {
    fn of(trial: usize) -> Mode {
        match trial % 4 {
            0 | 1 => Mode::IntoEmpty,
            2 => Mode::Merge,
            _ => Mode::KeepShare,
        }
    }
    fn migrate(self) -> &'static str {
        match self {
            Mode::Merge => "merge",
            _ => "if-empty",
        }
    }
}

struct Lab {
    base: PathBuf,
    lower: PathBuf,
    pristine: Tree,
    /// What the share holds before a Merge/KeepShare trial.
    prepop: Tree,
}

/// Where a kill landed, judged from the disk right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Landed {
    /// Exited by itself before the kill.
    Finished,
    /// No trace of the run: killed before it took the lock.
    BeforeLock,
    /// Holding the lock, nothing copied yet.
    Locked,
    /// A staging directory (or a partial displaced copy) exists.
    Copying,
    /// Committed (share holds all), app directory not yet (fully) deleted.
    Pruning,
    /// App directory gone, symlink not yet in place.
    Swapping,
    /// Linked but the process had not exited (lock release, logging).
    AfterLink,
}

impl Lab {
    fn trial_dir(&self) -> PathBuf {
        self.base.join("trial")
    }

    /// A fresh overlay app root and tmpfs share; the share pre-populated
    /// for Merge/KeepShare trials. Returns (app_root, share_root, config).
    fn fresh(&self, mode: Mode) -> (PathBuf, PathBuf, PathBuf) {
        let t = self.trial_dir();
        support::umount_lazy(&t.join("ovl/merged"));
        support::umount_lazy(&t.join("share"));
        if t.exists() {
            fs::remove_dir_all(&t).unwrap();
        }
        fs::create_dir_all(&t).unwrap();
        let app_root = support::mount_overlay(&t.join("ovl"), &self.lower);
        let share = t.join("share");
        support::mount_tmpfs(&share, "256m");
        if mode != Mode::IntoEmpty {
            write_tree(&share.join("data"), &self.prepop);
        }
        let cfg = t.join("sharelink.toml");
        fs::write(
            &cfg,
            support::config_text(
                &app_root,
                &share,
                true,
                "",
                &format!(
                    "\"data\" = {{ share = \"data\", migrate = \"{}\" }}",
                    mode.migrate()
                ),
            ),
        )
        .unwrap();
        (app_root, share, cfg)
    }
}

fn write_tree(root: &Path, t: &Tree) {
    fs::create_dir_all(root).unwrap();
    for (rel, e) in t {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        match e {
            Node::Dir => fs::create_dir_all(&p).unwrap(),
            Node::File { bytes, mode } => {
                fs::write(&p, bytes).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Symlink(to) => std::os::unix::fs::symlink(to, &p).unwrap(),
            Node::Special(_) => {}
        }
    }
}
#[derive(Default)]
struct Figures {
    trials: usize,
    killed: usize,
    landed: BTreeMap<String, usize>,
    lost: usize,
    corrupt: usize,
    invariant_violations: usize,
    half_visible_targets: usize,
    leftovers: usize,
    rerun_failures: usize,
    not_linked: usize,
    duplicate_displaced: usize,
    failures: Vec<String>,
}

impl Figures {
    fn fail(&mut self, trial: usize, msg: String) {
        if self.failures.len() < 20 {
            self.failures.push(format!("trial {trial}: {msg}"));
        }
    }
}

#[test]
fn crash_consistency_random_sigkill() {
    if !in_private_mount_ns!("crash_consistency_random_sigkill") {
        return;
    }
    let seed = support::seed("crash_consistency_random_sigkill");
    let mut rng = support::Rng(seed);
    let trials = support::knob("SHARELINK_CRASH_TRIALS", 200);

    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    support::mount_tmpfs(&base, "2g");
    // The image layer: built once, shared by every trial's overlay.
    let lower = base.join("lower");
    let files = support::make_tree(&lower.join("data"), 2200, 96 * 1024, 0x5eed);
    for d in ["deep/er/and/deeper/empty", "e1", "e2/e3"] {
        fs::create_dir_all(lower.join("data").join(d)).unwrap();
    }
    let pristine = support::snapshot(&lower.join("data"));
    let count = |f: fn(&Node) -> bool| pristine.values().filter(|e| f(e)).count();
    let n_files = count(|e| matches!(e, Node::File { .. }));
    let n_links = count(|e| matches!(e, Node::Symlink(_)));
    let n_dirs = count(|e| matches!(e, Node::Dir));
    let bytes: usize = pristine
        .values()
        .map(|e| match e {
            Node::File { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum();
    assert!(n_files >= 2000 && files >= 2000 && n_links > 0 && n_dirs > 10);
    // The share side of Merge/KeepShare trials: every third original entry
    // (as an earlier replica would have left it) plus files of its own.
    let mut prepop: Tree = pristine
        .iter()
        .enumerate()
        .filter(|(i, (_, e))| i % 3 == 0 && !matches!(e, Node::Dir))
        .map(|(_, (k, v))| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        (
            "share_only.txt",
            b"written by the share's other users".to_vec(),
        ),
        ("share_only_dir/inner.bin", vec![7u8; 3000]),
    ] {
        prepop.insert(
            k.into(),
            Node::File {
                bytes: v,
                mode: 0o644,
            },
        );
    }
    let lab = Lab {
        base: base.clone(),
        lower,
        pristine,
        prepop,
    };

    // How long an uninterrupted migration takes, per mode: a median over
    // samples taken at the start and again every 10 trials, so that load
    // from elsewhere on the machine does not skew where kills land.
    let mut samples: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let calibrate = |samples: &mut BTreeMap<String, Vec<Duration>>, runs: usize| {
        for mode in [Mode::IntoEmpty, Mode::Merge, Mode::KeepShare] {
            for _ in 0..runs {
                let (_, _, cfg) = lab.fresh(mode);
                let t0 = Instant::now();
                let o = support::sharelink(&cfg).arg("link").output().unwrap();
                let took = t0.elapsed();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                let v = samples.entry(format!("{mode:?}")).or_default();
                v.push(took);
                // The recent past matters most.
                if v.len() > 9 {
                    v.remove(0);
                }
            }
        }
    };
    let median = |v: &Vec<Duration>| {
        let mut v = v.clone();
        v.sort();
        v[v.len() / 2]
    };
    calibrate(&mut samples, 5);
    eprintln!(
        "tree: {n_files} files ({bytes} bytes), {n_links} symlinks, {n_dirs} dirs; migration takes {:?}",
        samples.iter().map(|(k, v)| (k.clone(), median(v))).collect::<BTreeMap<_, _>>()
    );

    let mut fig = Figures::default();
    for trial in 0..trials {
        if trial > 0 && trial % 10 == 0 {
            calibrate(&mut samples, 1);
        }
        let mode = Mode::of(trial);
        let full = median(&samples[&format!("{mode:?}")]);
        let (app_root, share, cfg) = lab.fresh(mode);
        let delay = full.mul_f64(1.2 * rng.unit());
        let log = lab.trial_dir().join("killed.log");
        let mut child = support::sharelink(&cfg)
            .arg("-v")
            .arg("link")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        fig.trials += 1;
        let landed = if finished {
            if !status.success() {
                fig.rerun_failures += 1;
                fig.fail(
                    trial,
                    format!(
                        "uninterrupted run failed: {}",
                        fs::read_to_string(&log).unwrap_or_default()
                    ),
                );
            }
            Landed::Finished
        } else {
            fig.killed += 1;
            where_landed(&lab, &app_root, &share, mode)
        };
        *fig.landed.entry(format!("{landed:?}")).or_default() += 1;

        // The invariant, right after the kill.
        check_invariant(&lab, &app_root, &share, mode, trial, &mut fig);

        // The next run finishes the work.
        let o = support::sharelink(&cfg).arg("link").output().unwrap();
        if !o.status.success() {
            fig.rerun_failures += 1;
            fig.fail(
                trial,
                format!(
                    "rerun after a kill ({landed:?}, {delay:?}) exited {}: {}",
                    support::code(&o.status),
                    String::from_utf8_lossy(&o.stderr)
                ),
            );
            continue;
        }
        check_final(&lab, &app_root, &share, mode, trial, &mut fig);
    }

    let landed_mid = fig.killed - fig.landed.get("BeforeLock").copied().unwrap_or(0);
    let took: BTreeMap<_, _> = samples
        .iter()
        .map(|(k, v)| (k.clone(), median(v)))
        .collect();
    let summary = format!(
        "crash consistency: {} trials of SIGKILL during migration of {n_files} files / {n_links} symlinks / {n_dirs} dirs ({bytes} bytes; uninterrupted {took:?}), seed {seed}: \
         {} killed ({landed_mid} mid-migration: {:?}), lost {}, corrupt {}, invariant violations {}, half-visible targets {}, \
         reruns failed {}, not linked {}, leftovers {}, duplicate displaced copies {}",
        fig.trials,
        fig.killed,
        fig.landed,
        fig.lost,
        fig.corrupt,
        fig.invariant_violations,
        fig.half_visible_targets,
        fig.rerun_failures,
        fig.not_linked,
        fig.leftovers,
        fig.duplicate_displaced,
    );
    support::report(&summary);
    assert!(
        fig.failures.is_empty(),
        "{summary}\nfirst failures:\n{}",
        fig.failures.join("\n")
    );
    // The trials must actually have exercised the migration.
    assert!(landed_mid * 2 >= trials, "{summary}");
    for phase in ["Copying", "Pruning"] {
        assert!(
            fig.landed.get(phase).copied().unwrap_or(0) > 0,
            "no kill landed in {phase}: {summary}"
        );
    }
    support::umount_lazy(&base);
}

fn count_entries(root: &Path) -> usize {
    let mut n = 0;
    support::walk_names(root, &mut |_, _| n += 1);
    n
}

fn where_landed(lab: &Lab, app_root: &Path, share: &Path, mode: Mode) -> Landed {
    let app = app_root.join("data");
    let lock = share.join(".sharelink/locks/data");
    let staging = share.join(".data.sharelink-staging");
    let partial = support::names(&share.join(".sharelink/displaced/data"))
        .iter()
        .any(|n| n.ends_with(".partial"));
    let app_meta = fs::symlink_metadata(&app).ok();
    let app_is_dir = app_meta.as_ref().is_some_and(|m| m.is_dir());
    let app_is_link = app_meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_symlink());
    let committed = match mode {
        Mode::IntoEmpty => share.join("data").exists(),
        // Without a staging or partial copy left, a merge or displacement
        // has reached its end once the app directory started to shrink.
        _ => {
            !staging.exists()
                && !partial
                && app_is_dir
                && (count_entries(&app) < lab.pristine.len()
                    || !support::displaced(share, "data").is_empty())
        }
    };
    if app_is_link {
        Landed::AfterLink
    } else if !app_is_dir {
        Landed::Swapping
    } else if committed {
        Landed::Pruning
    } else if staging.exists() || partial {
        Landed::Copying
    } else if lock.exists() {
        Landed::Locked
    } else {
        Landed::BeforeLock
    }
}

/// Right after a kill: every original entry is whole in the app directory,
/// the share target, or a completed displaced copy; the share target never
/// holds a partial file; an `IntoEmpty` target is all or nothing.
fn check_invariant(
    lab: &Lab,
    app_root: &Path,
    share: &Path,
    mode: Mode,
    trial: usize,
    fig: &mut Figures,
) {
    let app = app_root.join("data");
    let app_is_dir = fs::symlink_metadata(&app).is_ok_and(|m| m.is_dir());
    let target = share.join("data");
    let stamps = support::displaced(share, "data");
    let mut lost_here = 0;
    for (rel, e) in &lab.pristine {
        let whole = (app_is_dir && support::holds(&app.join(rel), e))
            || support::holds(&target.join(rel), e)
            || stamps.iter().any(|s| support::holds(&s.join(rel), e));
        if !whole {
            lost_here += 1;
            if lost_here <= 3 {
                fig.fail(
                    trial,
                    format!("right after the kill, {} is nowhere whole", rel.display()),
                );
            }
        }
    }
    if lost_here > 0 {
        fig.invariant_violations += 1;
    }
    // The share target: only whole files, and for IntoEmpty all or nothing.
    if target.exists() {
        let got = support::snapshot(&target);
        let mut partial = 0;
        for (rel, g) in &got {
            let ok = lab.pristine.get(rel) == Some(g)
                || (mode != Mode::IntoEmpty && lab.prepop.get(rel) == Some(g))
                || matches!(g, Node::Dir)
                || lab.pristine.get(rel).is_some_and(|w| w.same_content(g));
            if !ok {
                partial += 1;
                if partial <= 3 {
                    fig.fail(
                        trial,
                        format!("share target shows {} as {}", rel.display(), g.brief()),
                    );
                }
            }
        }
        if mode == Mode::IntoEmpty {
            let (missing, _, _, msgs) = support::diff(&lab.pristine, &got, false, 3);
            if missing > 0 {
                partial += 1;
                fig.fail(
                    trial,
                    format!("share target visible with {missing} entries missing: {msgs:?}"),
                );
            }
        }
        if partial > 0 {
            fig.half_visible_targets += 1;
        }
    }
    for s in &stamps {
        for (rel, g) in &support::snapshot(s) {
            if !matches!(g, Node::Dir) && !lab.pristine.get(rel).is_some_and(|w| w.same_content(g))
            {
                fig.half_visible_targets += 1;
                fig.fail(
                    trial,
                    format!(
                        "displaced copy {} shows {} as {}",
                        s.display(),
                        rel.display(),
                        g.brief()
                    ),
                );
            }
        }
    }
}

/// After the rerun: linked, the share holds exactly what it should, byte
/// for byte and with modes, and nothing is left behind.
fn check_final(
    lab: &Lab,
    app_root: &Path,
    share: &Path,
    mode: Mode,
    trial: usize,
    fig: &mut Figures,
) {
    let app = app_root.join("data");
    if fs::read_link(&app).ok() != Some(share.join("data")) {
        fig.not_linked += 1;
        fig.fail(
            trial,
            format!("{} is not the symlink after the rerun", app.display()),
        );
    }
    let want: Tree = match mode {
        Mode::IntoEmpty => lab.pristine.clone(),
        Mode::Merge => {
            let mut w = lab.pristine.clone();
            w.extend(lab.prepop.clone());
            w.insert("share_only_dir".into(), Node::Dir);
            w
        }
        Mode::KeepShare => {
            let mut w = lab.prepop.clone();
            // Directories the pre-populated files sit in.
            for k in lab.prepop.keys() {
                for a in k.ancestors().skip(1) {
                    if !a.as_os_str().is_empty() {
                        w.insert(a.to_path_buf(), Node::Dir);
                    }
                }
            }
            w
        }
    };
    let got = support::snapshot(&share.join("data"));
    let (missing, corrupt, extra, msgs) = support::diff(&want, &got, true, 5);
    if missing + corrupt + extra > 0 {
        fig.lost += missing;
        fig.corrupt += corrupt + extra;
        fig.fail(trial, format!("share after rerun: {missing} missing, {corrupt} differ, {extra} unexpected: {msgs:?}"));
    }
    let stamps = support::displaced(share, "data");
    match mode {
        Mode::KeepShare => {
            // Every app-only entry is in a displaced copy, whole.
            let mut missing = 0;
            for (rel, e) in &lab.pristine {
                if lab.prepop.contains_key(rel) || matches!(e, Node::Dir) && want.contains_key(rel)
                {
                    continue;
                }
                if !stamps.iter().any(|s| support::holds(&s.join(rel), e)) {
                    missing += 1;
                    if missing <= 3 {
                        fig.fail(
                            trial,
                            format!("{} neither on the share nor displaced", rel.display()),
                        );
                    }
                }
            }
            fig.lost += missing;
            // A rerun finds what a killed run had already set aside: no
            // second copy.
            if stamps.len() > 1 {
                fig.duplicate_displaced += 1;
                fig.fail(trial, format!("displaced twice: {stamps:?}"));
            }
        }
        _ => {
            if !stamps.is_empty() {
                fig.corrupt += 1;
                fig.fail(
                    trial,
                    format!("displaced copies made although nothing conflicted: {stamps:?}"),
                );
            }
        }
    }
    let left = support::leftovers(app_root, share);
    if !left.is_empty() {
        fig.leftovers += 1;
        fig.fail(trial, format!("left behind: {left:?}"));
    }
}
