//! Crash sweep: kill `sharelink link` (SIGKILL, via the `failpoints`
//! feature) at every failpoint a migration reaches — first, middle and last
//! hit — check the invariant on disk at that instant, then check that the
//! next run finishes the job with every byte where it belongs. Then the
//! resume path: a killed copy is continued, not started over.
//!
//! Needs `cargo test --features failpoints`; without it
//! `crash_tests_need_the_failpoints_feature` fails.

use crate::support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::api::FAILPOINTS;

type Tree = BTreeMap<PathBuf, Node>;

#[cfg(not(feature = "failpoints"))]
#[test]
fn crash_tests_need_the_failpoints_feature() {
    panic!(
        "the crash tests need the failpoint hooks: run `cargo test --features failpoints` \
         (a build without them cannot crash on purpose, so the sweep would test nothing)"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Baked dir in an overlay lower layer, share target missing.
    IntoEmpty,
    /// `if-empty` with a non-empty share: conflicts and app-only entries
    /// are set aside.
    KeepShare,
    /// `merge` with a non-empty share: app-only entries copied in,
    /// conflicts set aside.
    Merge,
    /// `image-wins` with a non-empty share and `keep = "30d"`: app-only
    /// entries copied in, conflicts replace the share's entries (kept under
    /// `displaced/` first), an old set-aside copy pruned.
    ImageWins,
}

/// The failpoints each scenario must reach.
fn reachable(s: Scenario) -> BTreeSet<&'static str> {
    let mut v = vec![
        "lock.acquired",
        "staging.created",
        "staging.file",
        "staging.journal",
        "staging.synced",
        "prune.leased",
        "prune.unlinked",
        "prune.entry",
        "prune.done",
        "swap.temp",
    ];
    match s {
        Scenario::IntoEmpty => v.extend(["commit.renamed", "commit.marked", "commit.synced"]),
        Scenario::KeepShare => v.push("displace.renamed"),
        Scenario::Merge => v.extend(["merge.moved", "displace.renamed"]),
        Scenario::ImageWins => v.extend([
            "merge.moved",
            "displace.renamed",
            "replace.checked",
            "replace.aside",
            "supersede.kept",
            "supersede.replaced",
            "keep.removed",
        ]),
    }
    v.into_iter().collect()
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
}

impl Case {
    fn app(&self) -> PathBuf {
        self.merged.join("data")
    }
    fn target(&self) -> PathBuf {
        self.share_root.join("data")
    }
    fn staging(&self) -> PathBuf {
        self.share_root.join(".data.sharelink-staging")
    }
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut c = sharelink(&self.config);
        // One worker: failpoints are then reached in a fixed order and hit
        // counts are exact.
        c.args(args).env("SHARELINK_PARALLELISM", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

/// A baked tree with every kind `cp -a` keeps: nested and empty
/// directories, symlinks, odd modes, a hard link, a sparse file, a FIFO.
fn bake(data: &Path, files: usize, seed: u64) {
    make_tree(data, files, 3000, seed);
    fs::write(data.join("linked"), "one inode, two names").unwrap();
    fs::create_dir_all(data.join("other")).unwrap();
    fs::hard_link(data.join("linked"), data.join("other/linked-too")).unwrap();
    let f = fs::File::create(data.join("sparse")).unwrap();
    f.set_len(8 << 20).unwrap();
    sh(&format!("mkfifo '{}'", data.join("fifo").display()));
}

/// `work` and `shares` are two tmpfs (two filesystems, as in production).
fn setup(work: &Path, shares: &Path, n: usize, s: Scenario, files: usize) -> Case {
    let base = work.join(format!("case{n}"));
    let lower = base.join("lower");
    let data = lower.join("data");
    bake(&data, files, 1000);
    let share_root = shares.join(format!("case{n}"));
    let target = share_root.join("data");
    fs::create_dir_all(&share_root).unwrap();
    if s != Scenario::IntoEmpty {
        // Overlapping content: the same paths with the same or other
        // bytes, share-only files, and an app file where the share has a
        // directory.
        make_tree(&target, files / 3, 500, 5000);
        for (p, _) in snapshot(&data)
            .iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .take(4)
        {
            // Byte-identical copies of a few app files.
            if let Some(parent) = target.join(p).parent() {
                fs::create_dir_all(parent).unwrap();
            }
            if !target.join(p).exists() {
                fs::copy(data.join(p), target.join(p)).unwrap();
            }
        }
        fs::write(data.join("clash"), "app file where the share has a dir").unwrap();
        fs::create_dir(target.join("clash")).unwrap();
        fs::write(target.join("clash/inside"), "share's").unwrap();
    }
    if s == Scenario::ImageWins {
        // The share's own versions of app files (the previous image's, or
        // the pipeline's), and a file where the image has a directory.
        for (p, _) in snapshot(&data)
            .iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .skip(4)
            .take(6)
        {
            if fs::symlink_metadata(target.join(p)).is_err() {
                fs::create_dir_all(target.join(p).parent().unwrap()).unwrap();
                fs::write(target.join(p), format!("the share's {}", p.display())).unwrap();
            }
        }
        fs::write(
            target.join("other"),
            "a share file where the image has a dir",
        )
        .unwrap();
        // A set-aside copy older than `keep`.
        let old = share_root.join(".sharelink/displaced/data").join(OLD_STAMP);
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("old.txt"), "set aside long ago").unwrap();
    }
    let merged = mount_overlay(&base.join("ovl"), &lower);
    let config = base.join("sharelink.toml");
    let migrate = match s {
        Scenario::Merge => "merge",
        Scenario::ImageWins => "image-wins",
        _ => "if-empty",
    };
    let dirs = if s == Scenario::IntoEmpty {
        "[\"input\"]"
    } else {
        "[]"
    };
    let keep = if s == Scenario::ImageWins {
        ", keep = \"30d\""
    } else {
        ""
    };
    let link =
        format!("\"data\" = {{ share = \"data\", dirs = {dirs}, migrate = {migrate:?}{keep} }}");
    fs::write(&config, config_text(&merged, &share_root, false, "", &link)).unwrap();
    let orig = snapshot(&merged.join("data"));
    let share_before = if target.exists() {
        snapshot(&target)
    } else {
        Tree::new()
    };
    // Old enough that sharelink trusts their timestamps at once (it waits
    // for entries that changed within the last instant).
    std::thread::sleep(std::time::Duration::from_millis(150));
    Case {
        merged,
        share_root,
        config,
        orig,
        share_before,
    }
}

/// A set-aside stamp from 2020: older than any `keep` age.
const OLD_STAMP: &str = "20200101T000000Z";

/// What an `image-wins` migration leaves in the share target: the share's
/// entries with the app's over them, except where the share has a
/// directory and the app a non-directory (that app entry is set aside).
fn image_wins_result(orig: &Tree, share: &Tree) -> Tree {
    let mut want = share.clone();
    let mut kept_out: Vec<&PathBuf> = Vec::new();
    for (p, n) in orig {
        if kept_out.iter().any(|k| p.starts_with(k)) {
            continue;
        }
        if share.get(p) == Some(&Node::Dir) && *n != Node::Dir {
            kept_out.push(p);
            continue;
        }
        want.insert(p.clone(), n.clone());
    }
    want
}

/// Top-most app entries the share lacks.
fn app_only(orig: &Tree, share: &Tree) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = Vec::new();
    for p in orig.keys() {
        if missing.iter().any(|m| p.starts_with(m)) {
            continue;
        }
        if !share.contains_key(p) {
            missing.push(p.clone());
        }
    }
    missing
}

/// Complete displaced copies (`.partial` ones excluded).
fn displaced_trees(case: &Case) -> Vec<Tree> {
    displaced(&case.share_root, "data")
        .iter()
        .map(|p| snapshot(p))
        .collect()
}

fn strip_input(mut t: Tree) -> Tree {
    if t.get(Path::new("input")) == Some(&Node::Dir) {
        t.remove(Path::new("input"));
    }
    t
}

/// How each failpoint is hit in a full run of a fresh case.
fn hit_counts(
    work: &Path,
    shares: &Path,
    n: usize,
    s: Scenario,
    files: usize,
) -> BTreeMap<String, usize> {
    let probe = setup(work, shares, n, s, files);
    let log = work.join(format!("hits{n}"));
    let o = probe.run(
        &["link"],
        &[("SHARELINK_FAILPOINT_LOG", log.to_str().unwrap())],
    );
    assert_eq!(code(&o), 0, "probe run: {}", stderr(&o));
    check_finished(s, &probe, "probe");
    umount(&probe.merged);
    let mut counts = BTreeMap::new();
    for l in fs::read_to_string(&log).unwrap().lines() {
        *counts.entry(l.to_string()).or_insert(0) += 1;
    }
    counts
}

/// The invariant right after the kill: every original entry is whole in
/// the app dir, in the share target (same content), or in a complete
/// displaced copy; the share target never shows a half-made copy.
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
    let kept = displaced_trees(case);
    match s {
        Scenario::IntoEmpty => {
            if case.target().exists() {
                assert_eq!(target_now, case.orig, "{what}: half-copied share target");
            } else {
                assert_eq!(app_now, case.orig, "{what}: app changed before the commit");
            }
        }
        Scenario::KeepShare => assert_eq!(target_now, case.share_before, "{what}: share changed"),
        Scenario::ImageWins => {
            // Each entry of the target is the share's version or the app's,
            // never a half-made one; each of the share's versions is whole
            // in the target or in a complete set-aside copy.
            for (p, n) in &target_now {
                let known = *n == Node::Dir
                    || case.share_before.get(p).is_some_and(|s| s.same_content(n))
                    || case.orig.get(p).is_some_and(|o| o.same_content(n));
                assert!(known, "{what}: {} is neither version", p.display());
            }
            for (p, n) in case.share_before.iter().filter(|(_, n)| **n != Node::Dir) {
                let whole = target_now.get(p).is_some_and(|t| t.same_content(n))
                    || kept
                        .iter()
                        .any(|k| k.get(p).is_some_and(|t| t.same_content(n)));
                assert!(
                    whole,
                    "{what}: the share's {} is nowhere whole",
                    p.display()
                );
            }
        }
        Scenario::Merge => {
            for (p, n) in &case.share_before {
                assert_eq!(
                    target_now.get(p),
                    Some(n),
                    "{what}: share's {}",
                    p.display()
                );
            }
            // Each app-only subtree appears whole or not at all.
            for top in app_only(&case.orig, &case.share_before) {
                if target_now.contains_key(&top) {
                    for (p, n) in case.orig.iter().filter(|(p, _)| p.starts_with(&top)) {
                        assert_eq!(
                            target_now.get(p),
                            Some(n),
                            "{what}: half-merged {}",
                            p.display()
                        );
                    }
                }
            }
        }
    }
    for (p, n) in &case.orig {
        let whole = app_now.get(p) == Some(n)
            || target_now.get(p).is_some_and(|t| t.same_content(n))
            || kept
                .iter()
                .any(|k| k.get(p).is_some_and(|t| t.same_content(n)));
        assert!(whole, "{what}: {} is nowhere whole", p.display());
    }
    // Whatever the app dir still has is original.
    for (p, n) in &app_now {
        assert_eq!(case.orig.get(p), Some(n), "{what}: app {}", p.display());
    }
    let o = case.run(&["status"], &[]);
    assert_eq!(
        code(&o),
        1,
        "{what}: status healthy mid-migration: {}",
        stdout(&o)
    );
}

/// After the run that finishes: linked, every original entry in the share
/// target or set aside (exactly once), nothing left over.
fn check_finished(s: Scenario, case: &Case, what: &str) {
    assert_eq!(
        fs::read_link(case.app()).ok().as_deref(),
        Some(case.target().as_path()),
        "{what}: not linked"
    );
    let target = strip_input(snapshot(&case.target()));
    let kept = displaced_trees(case);
    match s {
        Scenario::IntoEmpty => {
            assert_eq!(target, case.orig, "{what}: share != original");
            assert!(kept.is_empty(), "{what}: displaced something");
            // Hard links stay hard links.
            let a = fs::metadata(case.target().join("linked")).unwrap();
            let b = fs::metadata(case.target().join("other/linked-too")).unwrap();
            assert_eq!(a.ino(), b.ino(), "{what}: hard link split");
            // The sparse file stays sparse.
            let sp = fs::metadata(case.target().join("sparse")).unwrap();
            assert!(
                sp.blocks() * 512 < 1 << 20,
                "{what}: sparse file written densely"
            );
        }
        Scenario::KeepShare => assert_eq!(target, case.share_before, "{what}: share changed"),
        Scenario::ImageWins => {
            let want = image_wins_result(&case.orig, &case.share_before);
            assert_eq!(target, want, "{what}: the image's data did not win");
            // The share's versions it replaced are kept.
            let mut replaced = 0;
            for (p, n) in case.share_before.iter().filter(|(_, n)| **n != Node::Dir) {
                if target.get(p).is_some_and(|t| t.same_content(n)) {
                    continue;
                }
                replaced += 1;
                assert!(
                    kept.iter()
                        .any(|k| k.get(p).is_some_and(|t| t.same_content(n))),
                    "{what}: the share's {} was lost",
                    p.display()
                );
            }
            assert!(
                replaced >= 7,
                "{what}: only {replaced} share entries replaced"
            );
            let base = case.share_root.join(".sharelink/displaced/data");
            let left = names(&base);
            assert!(
                !left
                    .iter()
                    .any(|n| n == OLD_STAMP || n.ends_with(".expired")),
                "{what}: keep did not remove the old copy: {left:?}"
            );
        }
        Scenario::Merge => {
            let mut want = case.share_before.clone();
            for top in app_only(&case.orig, &case.share_before) {
                for (p, n) in case.orig.iter().filter(|(p, _)| p.starts_with(&top)) {
                    want.insert(p.clone(), n.clone());
                }
            }
            assert_eq!(target, want, "{what}: merged share");
        }
    }
    for (p, n) in &case.orig {
        if *n == Node::Dir {
            continue;
        }
        let on_share = target.get(p).is_some_and(|t| t.same_content(n));
        let copies = kept
            .iter()
            .filter(|k| k.get(p).is_some_and(|t| t.same_content(n)))
            .count();
        assert!(
            on_share || copies == 1,
            "{what}: {} kept {copies} times, on share: {on_share}",
            p.display()
        );
        if on_share {
            assert_eq!(
                copies,
                0,
                "{what}: {} both on the share and set aside",
                p.display()
            );
        }
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
    assert!(
        entries_containing(&case.merged, "sharelink-committed").is_empty(),
        "{what}: marker left"
    );
    let left = entries_containing(&case.share_root.join(".sharelink/locks"), "");
    assert!(left.is_empty(), "{what}: locks left behind: {left:?}");
    let o = case.run(&["status"], &[]);
    assert_eq!(code(&o), 0, "{what}: status: {}", stdout(&o));
}

/// `test`: the test's path from [`test_path!`].
fn sweep(test: &str, s: Scenario) {
    if !in_private_mount_ns(test) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (work, shares) = (root.path().join("work"), root.path().join("shares"));
    mount_tmpfs(&work, "512m");
    mount_tmpfs(&shares, "512m");
    let counts = hit_counts(&work, &shares, 0, s, 40);
    let reached: BTreeSet<&str> = counts.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        reached,
        reachable(s),
        "{s:?}: failpoints reached differ from the expected ones"
    );
    for name in &reached {
        assert!(
            FAILPOINTS.contains(name),
            "{name} is not listed in FAILPOINTS"
        );
    }
    let (mut n, mut cases) = (1, 0);
    for (name, &count) in &counts {
        let mut nths = vec![1, count.div_ceil(2), count];
        nths.dedup();
        for nth in nths {
            n += 1;
            cases += 1;
            let case = setup(&work, &shares, n, s, 40);
            let fp = format!("{name}:{nth}");
            let what = format!("{s:?} {fp}");
            let o = case.run(&["link"], &[("SHARELINK_FAILPOINT", &fp)]);
            assert!(
                stderr(&o).contains(&format!("failpoint {name} hit")),
                "{what}: not hit: {}",
                stderr(&o)
            );
            assert_eq!(code(&o), 137, "{what}: {}", stderr(&o));
            check_after_crash(s, &case, &what);
            let again = case.run(&["link"], &[]);
            assert_eq!(code(&again), 0, "{what}: rerun: {}", stderr(&again));
            check_finished(s, &case, &what);
            umount(&case.merged);
        }
    }
    eprintln!("{s:?}: {cases} cases over {} failpoints", counts.len());
}

#[test]
fn crash_anywhere_into_empty_share_then_rerun_completes() {
    sweep(
        test_path!("crash_anywhere_into_empty_share_then_rerun_completes"),
        Scenario::IntoEmpty,
    );
}

#[test]
fn crash_anywhere_while_setting_aside_then_rerun_completes() {
    sweep(
        test_path!("crash_anywhere_while_setting_aside_then_rerun_completes"),
        Scenario::KeepShare,
    );
}

#[test]
fn crash_anywhere_while_the_image_wins_then_rerun_completes() {
    sweep(
        test_path!("crash_anywhere_while_the_image_wins_then_rerun_completes"),
        Scenario::ImageWins,
    );
}

#[test]
fn crash_anywhere_while_merging_then_rerun_completes() {
    sweep(
        test_path!("crash_anywhere_while_merging_then_rerun_completes"),
        Scenario::Merge,
    );
}

/// Files of the staging tree with their inodes.
fn staged_inodes(case: &Case) -> BTreeMap<PathBuf, u64> {
    let tree = case.staging().join("tree");
    snapshot(&tree)
        .into_iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(p, _)| {
            let ino = fs::metadata(tree.join(&p)).unwrap().ino();
            (p, ino)
        })
        .collect()
}

/// A copy killed after its files were made durable is not done again: the
/// next run keeps the very same staged files (same inodes) and says so.
#[test]
fn killed_copy_resumes_instead_of_starting_over() {
    if !in_private_mount_ns!("killed_copy_resumes_instead_of_starting_over") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (work, shares) = (root.path().join("work"), root.path().join("shares"));
    mount_tmpfs(&work, "512m");
    mount_tmpfs(&shares, "512m");
    let case = setup(&work, &shares, 0, Scenario::IntoEmpty, 120);
    let o = case.run(&["link"], &[("SHARELINK_FAILPOINT", "staging.synced")]);
    assert_eq!(code(&o), 137, "{}", stderr(&o));
    let staged = staged_inodes(&case);
    let files = case
        .orig
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count();
    // One name of the hard-linked pair is a link, not a copy.
    assert_eq!(staged.len(), files, "{staged:?}");
    let o = case.run(&["link"], &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("resuming an interrupted copy"), "{err}");
    assert!(
        err.contains(&format!("({} files", files - 1)),
        "resumed count: {err}"
    );
    for (p, ino) in &staged {
        let now = fs::metadata(case.target().join(p)).unwrap().ino();
        assert_eq!(now, *ino, "{} was copied again", p.display());
    }
    check_finished(Scenario::IntoEmpty, &case, "resumed");
    umount(&case.merged);
}

/// Every state a kill leaves is recognisable from disk: `status` (text and
/// JSON) says `interrupted` and what the next run finishes, `link
/// --dry-run` changes nothing, and the next run finishes it.
#[test]
fn status_names_each_interrupted_state_and_the_next_run_finishes_it() {
    if !in_private_mount_ns!("status_names_each_interrupted_state_and_the_next_run_finishes_it") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (work, shares) = (root.path().join("work"), root.path().join("shares"));
    mount_tmpfs(&work, "512m");
    mount_tmpfs(&shares, "512m");
    let cases = [
        (
            Scenario::IntoEmpty,
            "staging.synced",
            "a copy into the share was interrupted",
        ),
        (
            Scenario::KeepShare,
            "staging.synced",
            "setting conflicting files aside was interrupted",
        ),
        (
            Scenario::IntoEmpty,
            "commit.synced",
            "the data is in the share",
        ),
        (
            Scenario::IntoEmpty,
            "commit.renamed",
            "committed by a run that did not finish",
        ),
    ];
    for (n, (s, point, says)) in cases.into_iter().enumerate() {
        let what = format!("{s:?} killed at {point}");
        let case = setup(&work, &shares, n, s, 60);
        let o = case.run(&["status"], &[]);
        assert_eq!(code(&o), 1, "{what}: {}", stdout(&o));
        assert!(
            stdout(&o).contains("needs-migration"),
            "{what}: {}",
            stdout(&o)
        );
        let o = case.run(&["link"], &[("SHARELINK_FAILPOINT", point)]);
        assert_eq!(code(&o), 137, "{what}: {}", stderr(&o));
        let o = case.run(&["status"], &[]);
        assert_eq!(code(&o), 1, "{what}: {}", stdout(&o));
        let text = stdout(&o);
        assert!(
            text.contains("interrupted") && text.contains(says),
            "{what}: {text}"
        );
        let o = case.run(&["status", "--json"], &[]);
        assert!(
            stdout(&o).contains("\"state\":\"interrupted\""),
            "{what}: {}",
            stdout(&o)
        );
        let (app, share) = (snapshot(&case.merged), snapshot(&case.share_root));
        let o = case.run(&["link", "--dry-run"], &[]);
        assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("interrupted"),
            "{what}: dry run: {}",
            stdout(&o)
        );
        assert_eq!(
            snapshot(&case.merged),
            app,
            "{what}: dry run changed the app"
        );
        assert_eq!(
            snapshot(&case.share_root),
            share,
            "{what}: dry run changed the share"
        );
        let o = case.run(&["link"], &[]);
        assert_eq!(code(&o), 0, "{what}: {}", stderr(&o));
        check_finished(s, &case, &what);
        umount(&case.merged);
    }
}

/// What a startup probe that is too short does: kill the migration again
/// and again. Every attempt keeps what the previous ones copied, so the
/// migration finishes.
#[test]
fn repeatedly_killed_migration_still_finishes() {
    if !in_private_mount_ns!("repeatedly_killed_migration_still_finishes") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (work, shares) = (root.path().join("work"), root.path().join("shares"));
    mount_tmpfs(&work, "512m");
    mount_tmpfs(&shares, "512m");
    let case = setup(&work, &shares, 0, Scenario::IntoEmpty, 1500);
    let files = case
        .orig
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count();
    let mut journaled = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(
            attempts <= 20,
            "no end after {attempts} attempts: {journaled:?}"
        );
        // Killed right after its second batch of files became durable.
        let o = case.run(&["link"], &[("SHARELINK_FAILPOINT", "staging.journal:2")]);
        if code(&o) == 0 {
            break;
        }
        assert_eq!(code(&o), 137, "{}", stderr(&o));
        check_after_crash(Scenario::IntoEmpty, &case, &format!("attempt {attempts}"));
        let journal = fs::read_to_string(case.staging().join("journal")).unwrap_or_default();
        let n = journal.lines().filter(|l| l.starts_with("F ")).count();
        assert!(
            journaled.last().is_none_or(|&last| n > last),
            "no progress: {journaled:?} then {n}"
        );
        journaled.push(n);
    }
    assert!(
        attempts > 2,
        "the migration was not interrupted: {attempts}"
    );
    check_finished(Scenario::IntoEmpty, &case, "after repeated kills");
    eprintln!(
        "{files} files: finished on attempt {attempts}, durable after each kill: {journaled:?}"
    );
    umount(&case.merged);
}

/// Kills on a timer, each at half the time a whole migration takes, land
/// anywhere: in the copy, between the commit and the end of emptying the
/// app directory, in the prune. Every attempt must leave less to do than
/// the one before (the run after the commit reads no file again: the
/// staging journal says which share files are its copies), so the
/// migration finishes.
#[test]
fn killed_on_a_timer_again_and_again_still_finishes() {
    if !in_private_mount_ns!("killed_on_a_timer_again_and_again_still_finishes") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (work, shares) = (root.path().join("work"), root.path().join("shares"));
    mount_tmpfs(&work, "1g");
    mount_tmpfs(&shares, "1g");
    // How long an uninterrupted run of an identical case takes, measured
    // again before every attempt: other tests share the machine, and a
    // timer set while it was quiet could stop every run before it gets
    // anywhere once it is busy.
    let mut probes = 0;
    let mut whole = || {
        probes += 1;
        let probe = setup(&work, &shares, probes, Scenario::IntoEmpty, 3000);
        let t = std::time::Instant::now();
        let o = probe.run(&["link"], &[]);
        let took = t.elapsed();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        umount(&probe.merged);
        took
    };
    let case = setup(&work, &shares, 0, Scenario::IntoEmpty, 3000);
    let mut attempts = Vec::new();
    let finished = loop {
        assert!(attempts.len() < 20, "no end after 20 kills: {attempts:?}");
        let whole = whole();
        let mut c = sharelink(&case.config);
        c.arg("link")
            .env("SHARELINK_PARALLELISM", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(whole / 2);
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.success() {
            break attempts.len() + 1;
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
        let what = format!("kill {}", attempts.len() + 1);
        check_after_crash(Scenario::IntoEmpty, &case, &what);
        let left = fs::read_dir(case.app()).map(|d| d.count()).ok();
        attempts.push((whole, case.target().exists(), left));
    };
    assert!(
        !attempts.is_empty(),
        "the timer never interrupted the migration"
    );
    check_finished(Scenario::IntoEmpty, &case, "after kills on a timer");
    eprintln!(
        "killed at half a whole migration's time: (whole, committed, app entries left) {attempts:?}, finished on attempt {finished}"
    );
    umount(&case.merged);
}
