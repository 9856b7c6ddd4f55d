//! Crash sweep: kill `sharelink link` (SIGKILL, via the `failpoints`
//! feature) at every reachable failpoint of a migration — first, middle and
//! last hit — check SPEC's invariant on disk at that instant, then check
//! that the next run finishes the job with every byte where it belongs.
//!
//! Needs `cargo test --features failpoints`; without it this file fails.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use sharelink::migrate::FAILPOINTS;

type Tree = BTreeMap<PathBuf, Node>;

#[cfg(not(feature = "failpoints"))]
#[test]
fn crash_tests_need_the_failpoints_feature() {
    panic!(
        "tests/crash.rs needs the failpoint hooks: run `cargo test --features failpoints` \
         (a build without them cannot crash on purpose, so the sweep would test nothing)"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Baked dir in an overlay lower layer, share target missing.
    IntoEmpty,
    /// `if-empty` with a non-empty share: displacement.
    KeepShare,
    /// `merge` with a non-empty share (and one type clash, displaced).
    Merge,
}

/// The failpoints each scenario must reach. A name of `FAILPOINTS` that a
/// scenario does not reach must run to completion instead.
fn reachable(s: Scenario) -> &'static [&'static str] {
    const COMMON: [&str; 4] = ["lock.acquired", "prune.entry", "prune.done", "swap.temp"];
    match s {
        Scenario::IntoEmpty => &[
            COMMON[0],
            "staging.file",
            "staging.synced",
            "commit.renamed",
            "commit.synced",
            COMMON[1],
            COMMON[2],
            COMMON[3],
        ],
        Scenario::KeepShare => &[
            COMMON[0],
            "displace.file",
            "displace.synced",
            "displace.renamed",
            COMMON[1],
            COMMON[2],
            COMMON[3],
        ],
        Scenario::Merge => &[
            COMMON[0],
            "staging.created",
            "merge.file",
            "staging.synced",
            "merge.moved",
            "displace.file",
            "displace.synced",
            "displace.renamed",
            COMMON[1],
            COMMON[2],
            COMMON[3],
        ],
    }
}

/// One crash case: a fresh overlay app root and share directory.
struct Case {
    merged: PathBuf,
    share_root: PathBuf,
    config: PathBuf,
    /// The app directory as baked (seen through the overlay).
    orig: Tree,
    /// The share target before linking (empty for `IntoEmpty`).
    share_before: Tree,
    /// Run sharelink on one CPU: it then copies and deletes on one thread,
    /// so failpoint hit counts are exact.
    one_cpu: bool,
}

impl Case {
    fn app(&self) -> PathBuf {
        self.merged.join("data")
    }
    fn target(&self) -> PathBuf {
        self.share_root.join("data")
    }
    fn run(&self, args: &[&str], failpoint: Option<&str>) -> std::process::Output {
        let mut c = std::process::Command::new(BIN);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("SHARELINK_LOG")
            .env_remove("SHARELINK_FAILPOINT");
        if let Some(f) = failpoint {
            c.env("SHARELINK_FAILPOINT", f);
        }
        if self.one_cpu {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe libc calls between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    let size = std::mem::size_of::<libc::cpu_set_t>();
                    if libc::sched_getaffinity(0, size, &mut set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let first = (0..libc::CPU_SETSIZE as usize)
                        .find(|&i| libc::CPU_ISSET(i, &set))
                        .unwrap_or(0);
                    libc::CPU_ZERO(&mut set);
                    libc::CPU_SET(first, &mut set);
                    if libc::sched_setaffinity(0, size, &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        c.output().unwrap()
    }
}

/// `work` and `shares` are two tmpfs (two filesystems, as in production).
fn setup(work: &Path, shares: &Path, n: usize, s: Scenario, files: usize, one_cpu: bool) -> Case {
    let base = work.join(format!("case{n}"));
    let lower = base.join("lower");
    let data = lower.join("data");
    make_tree(&data, files, 3000, 1000);
    let share_root = shares.join(format!("case{n}"));
    let target = share_root.join("data");
    fs::create_dir_all(&share_root).unwrap();
    if s != Scenario::IntoEmpty {
        // Overlapping content: same paths with other bytes, share-only
        // files, and an app file where the share has a directory.
        make_tree(&target, 12, 500, 5000);
        fs::write(data.join("clash"), "app file where the share has a dir").unwrap();
        fs::create_dir(target.join("clash")).unwrap();
        fs::write(target.join("clash/inside"), "share's").unwrap();
    }
    let merged = mount_overlay(&base.join("ovl"), &lower);
    let config = base.join("sharelink.toml");
    let migrate = if s == Scenario::Merge {
        "merge"
    } else {
        "if-empty"
    };
    let dirs = if s == Scenario::IntoEmpty {
        "[\"input\"]"
    } else {
        "[]"
    };
    fs::write(
        &config,
        format!(
            "app_root = {merged:?}\nshare_root = {share_root:?}\nrequire_mount = false\n\n\
             [links]\n\"data\" = {{ share = \"data\", dirs = {dirs}, migrate = {migrate:?} }}\n"
        ),
    )
    .unwrap();
    let orig = snapshot(&merged.join("data"));
    let share_before = if target.exists() {
        snapshot(&target)
    } else {
        Tree::new()
    };
    Case {
        merged,
        share_root,
        config,
        orig,
        share_before,
        one_cpu,
    }
}

/// What `diff_trees` should find: app entries the share lacks (whole
/// subtrees) and type clashes, by path.
fn app_only(orig: &Tree, share: &Tree) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut missing, mut clashes) = (Vec::new(), Vec::new());
    for (p, n) in orig {
        if p.ancestors()
            .skip(1)
            .any(|a| missing.iter().any(|m: &PathBuf| m == a))
        {
            continue;
        }
        match share.get(p) {
            None => missing.push(p.clone()),
            Some(Node::Dir) if *n != Node::Dir => clashes.push(p.clone()),
            Some(m) if *m != Node::Dir && *n == Node::Dir => clashes.push(p.clone()),
            _ => {}
        }
    }
    (missing, clashes)
}

/// Nodes of `orig` at or below any of `tops`.
fn subtree_nodes(orig: &Tree, tops: &[PathBuf]) -> usize {
    orig.keys()
        .filter(|p| tops.iter().any(|t| p.starts_with(t)))
        .count()
}

/// How often each multi-hit failpoint fires in a full run of `case`.
fn hits(s: Scenario, case: &Case, name: &str) -> usize {
    let (missing, clashes) = app_only(&case.orig, &case.share_before);
    let whole = case.orig.len() + 1; // every entry, and the root
    match (s, name) {
        (Scenario::IntoEmpty, "staging.file") => whole,
        (_, "prune.entry") => whole,
        (Scenario::Merge, "merge.file") => subtree_nodes(&case.orig, &missing),
        (Scenario::Merge, "merge.moved") => missing.len(),
        (Scenario::Merge, "displace.file") => subtree_nodes(&case.orig, &clashes),
        (Scenario::KeepShare, "displace.file") => {
            subtree_nodes(&case.orig, &[missing, clashes].concat())
        }
        _ => 1,
    }
}

/// Complete displaced copies (`.partial` ones excluded).
fn displaced(case: &Case) -> Vec<Tree> {
    let base = case.share_root.join(".sharelink/displaced/data");
    let Ok(rd) = fs::read_dir(&base) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".partial"))
        .map(|p| snapshot(&p))
        .collect()
}

fn strip_input(mut t: Tree) -> Tree {
    if t.get(Path::new("input")) == Some(&Node::Dir) {
        t.remove(Path::new("input"));
    }
    t
}

/// SPEC's invariant, checked right after the kill: every original entry
/// is whole in the app dir, in the share target, or in a displaced copy;
/// the share target is never visible half-done.
fn check_after_crash(s: Scenario, case: &Case, what: &str) {
    let app_now = if fs::symlink_metadata(case.app()).is_ok_and(|m| m.is_dir()) {
        snapshot(&case.app())
    } else {
        Tree::new()
    };
    let target_now = if case.target().exists() {
        strip_input(snapshot(&case.target()))
    } else {
        Tree::new()
    };
    let kept = displaced(case);
    match s {
        Scenario::IntoEmpty => {
            if case.target().exists() {
                assert_eq!(target_now, case.orig, "{what}: half-copied share target");
            } else {
                assert_eq!(app_now, case.orig, "{what}: app changed before the commit");
            }
        }
        Scenario::KeepShare => {
            assert_eq!(target_now, case.share_before, "{what}: share changed");
        }
        Scenario::Merge => {
            for (p, n) in &target_now {
                let want = case.share_before.get(p).or_else(|| case.orig.get(p));
                assert_eq!(want, Some(n), "{what}: {} on the share", p.display());
            }
            for (p, n) in &case.share_before {
                assert_eq!(
                    target_now.get(p),
                    Some(n),
                    "{what}: share's {}",
                    p.display()
                );
            }
        }
    }
    for (p, n) in &case.orig {
        let whole = app_now.get(p) == Some(n)
            || target_now.get(p) == Some(n)
            // The share had this path: the share's version wins.
            || (s != Scenario::IntoEmpty && case.share_before.contains_key(p))
            || kept.iter().any(|k| k.get(p) == Some(n));
        assert!(whole, "{what}: {} is nowhere whole", p.display());
    }
    // Whatever the app dir still has is original.
    for (p, n) in &app_now {
        assert_eq!(case.orig.get(p), Some(n), "{what}: app {}", p.display());
    }
    let o = case.run(&["status"], None);
    assert_eq!(
        code(&o),
        1,
        "{what}: status healthy mid-migration: {}",
        stdout(&o)
    );
}

/// After the run that finishes: linked, the share as SPEC says, nothing
/// left over.
fn check_finished(s: Scenario, case: &Case, what: &str) {
    assert_eq!(
        fs::read_link(case.app()).ok().as_deref(),
        Some(case.target().as_path()),
        "{what}: not linked"
    );
    let target = snapshot(&case.target());
    let (missing, clashes) = app_only(&case.orig, &case.share_before);
    let kept = displaced(case);
    let must_be_kept: Vec<&PathBuf> = match s {
        Scenario::IntoEmpty => {
            assert_eq!(strip_input(target), case.orig, "{what}: share != original");
            assert!(kept.is_empty(), "{what}: displaced something");
            vec![]
        }
        Scenario::KeepShare => {
            assert_eq!(target, case.share_before, "{what}: share changed");
            case.orig
                .keys()
                .filter(|p| missing.iter().chain(&clashes).any(|t| p.starts_with(t)))
                .collect()
        }
        Scenario::Merge => {
            let mut want = case.share_before.clone();
            for (p, n) in &case.orig {
                if missing.iter().any(|t| p.starts_with(t)) {
                    want.insert(p.clone(), n.clone());
                }
            }
            assert_eq!(target, want, "{what}: merged share");
            case.orig
                .keys()
                .filter(|p| clashes.iter().any(|t| p.starts_with(t)))
                .collect()
        }
    };
    assert_eq!(!must_be_kept.is_empty(), s != Scenario::IntoEmpty);
    for p in must_be_kept {
        assert!(
            kept.iter().any(|k| k.get(p) == case.orig.get(p)),
            "{what}: app-only {} not displaced",
            p.display()
        );
    }
    let displaced_dir = case.share_root.join(".sharelink/displaced/data");
    assert!(
        entries_containing(&displaced_dir, ".partial").is_empty(),
        "{what}: partial displaced copy left"
    );
    assert!(
        entries_containing(&case.share_root, "sharelink-staging").is_empty(),
        "{what}: staging left"
    );
    assert!(
        entries_containing(&case.merged, "sharelink-link").is_empty(),
        "{what}: temporary symlink left"
    );
    // A run killed after its last step that needs the lock (pruning,
    // making the symlink) leaves its lock; the finishing run does not need
    // it but clears it, since its owner is dead: no lock may be left.
    let locks = case.share_root.join(".sharelink/locks");
    let left = entries_containing(&locks, "");
    assert!(left.is_empty(), "{what}: locks left behind: {left:?}");
    let o = case.run(&["status"], None);
    assert_eq!(code(&o), 0, "{what}: status: {}", stdout(&o));
}

fn sweep(test: &str, s: Scenario) {
    if !in_private_mount_ns(test) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (work, shares) = (root.path().join("work"), root.path().join("shares"));
    mount_tmpfs(&work, "512m");
    mount_tmpfs(&shares, "512m");
    let want: BTreeSet<&str> = reachable(s).iter().copied().collect();
    let mut hit = BTreeSet::new();
    let (mut n, mut cases) = (0, 0);
    for &name in FAILPOINTS {
        n += 1;
        let probe = setup(&work, &shares, n, s, 40, true);
        let count = hits(s, &probe, name);
        umount(&probe.merged);
        // First, middle and last hit, then one past the last (must finish).
        let mut nths: Vec<usize> = vec![1, count.div_ceil(2), count, count + 1];
        nths.dedup();
        for nth in nths {
            n += 1;
            cases += 1;
            let case = setup(&work, &shares, n, s, 40, true);
            let fp = format!("{name}:{nth}");
            let what = format!("{s:?} {fp}");
            let o = case.run(&["link"], Some(&fp));
            let killed = stderr(&o).contains(&format!("failpoint {name} hit"));
            if nth == 1 && want.contains(name) && code(&o) == 0 && !killed {
                panic!(
                    "{what}: the binary ignored SHARELINK_FAILPOINT; it was built without \
                     the hooks. Run `cargo test --features failpoints`"
                );
            }
            if killed {
                assert_eq!(code(&o), 137, "{what}: {}", stderr(&o));
                assert!(
                    nth <= count,
                    "{what}: hit more often than the {count} expected"
                );
                hit.insert(name);
                check_after_crash(s, &case, &what);
                let again = case.run(&["link"], None);
                assert_eq!(code(&again), 0, "{what}: rerun: {}", stderr(&again));
            } else {
                assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
                assert!(
                    nth > count || !want.contains(name),
                    "{what}: expected to be hit {count} times"
                );
            }
            check_finished(s, &case, &what);
            umount(&case.merged);
        }
    }
    assert_eq!(
        hit, want,
        "{s:?}: failpoints reached differ from the expected ones"
    );
    eprintln!("{s:?}: {cases} cases over {} failpoints", hit.len());
}

#[test]
fn crash_anywhere_into_empty_share_then_rerun_completes() {
    sweep(
        "crash_anywhere_into_empty_share_then_rerun_completes",
        Scenario::IntoEmpty,
    );
}

#[test]
fn crash_anywhere_while_displacing_then_rerun_completes() {
    sweep(
        "crash_anywhere_while_displacing_then_rerun_completes",
        Scenario::KeepShare,
    );
}

#[test]
fn crash_anywhere_while_merging_then_rerun_completes() {
    sweep(
        "crash_anywhere_while_merging_then_rerun_completes",
        Scenario::Merge,
    );
}

/// The parallel copy and delete (several threads once a tree has enough
/// files): hit counts vary from run to run, so crash at early hits of the
/// walk and of the threaded phase, and require that some of those kills
/// landed in the threaded phase.
#[test]
fn crash_during_parallel_copy_and_delete_then_rerun_completes() {
    if !in_private_mount_ns("crash_during_parallel_copy_and_delete_then_rerun_completes") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (work, shares) = (root.path().join("work"), root.path().join("shares"));
    mount_tmpfs(&work, "512m");
    mount_tmpfs(&shares, "512m");
    let s = Scenario::IntoEmpty;
    let files = 300;
    let probe = setup(&work, &shares, 0, s, files, false);
    // Ticks of the single-threaded walk before the files are copied:
    // one per directory and symlink.
    let walk = probe
        .orig
        .values()
        .filter(|n| !matches!(n, Node::File { .. }))
        .count()
        + 1;
    umount(&probe.merged);
    let mut n = 0;
    for (name, nths, threaded_from) in [
        (
            "staging.file",
            vec![1, walk + 1, walk + 5, walk + 40],
            walk + 1,
        ),
        ("prune.entry", vec![1, 5, 40], 1),
    ] {
        let mut threaded_kills = 0;
        for nth in nths {
            n += 1;
            let case = setup(&work, &shares, n, s, files, false);
            let fp = format!("{name}:{nth}");
            let what = format!("parallel {fp}");
            let o = case.run(&["link"], Some(&fp));
            if code(&o) == 137 {
                assert!(stderr(&o).contains("failpoint"), "{what}: {}", stderr(&o));
                if nth >= threaded_from {
                    threaded_kills += 1;
                }
                check_after_crash(s, &case, &what);
                let again = case.run(&["link"], None);
                assert_eq!(code(&again), 0, "{what}: rerun: {}", stderr(&again));
            } else {
                assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
                assert!(nth > 1, "{what}: first hit must kill");
            }
            check_finished(s, &case, &what);
            umount(&case.merged);
        }
        assert!(
            threaded_kills > 0,
            "{name}: no crash landed in the threaded phase"
        );
    }
}
