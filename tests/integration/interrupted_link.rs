//! A termination signal while `link` (or `run`'s linking) works: it stops
//! at a safe point with 128 + the signal, the data is whole in one place,
//! the command never starts, and the next run finishes the job.

use crate::support::*;

use std::fs;

/// Start `sharelink ARGS`, wait until `ready` holds (e.g. the staging
/// directory appeared), send `sig`; return whether it was sent (not if the
/// run finished first) and the output.
fn signal_when(
    sb: &Sandbox,
    args: &[&str],
    sig: nix::sys::signal::Signal,
    ready: impl Fn() -> bool,
) -> (bool, std::process::Output) {
    use std::process::Stdio;
    let child = sb
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut sent = false;
    // Until the moment comes, or the run ends first. The child is reaped
    // only by `try_wait`/`wait`, so `pid` cannot be reused before the kill.
    while child.try_wait().unwrap().is_none() {
        if ready() {
            nix::sys::signal::kill(pid, sig).unwrap();
            sent = true;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw the moment to signal"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    (sent, child.wait_with_output().unwrap())
}

fn big_tree_sandbox(
    links: &str,
    seed: u64,
) -> (
    Sandbox,
    std::collections::BTreeMap<std::path::PathBuf, Node>,
) {
    // App and share are two tmpfs: a busy disk would make these slow.
    let sb = Sandbox::new(links);
    mount_tmpfs(&sb.app, "256m");
    mount_tmpfs(&sb.share, "256m");
    make_tree(&sb.app.join("data"), 3000, 2000, seed);
    let before = snapshot(&sb.app.join("data"));
    (sb, before)
}

/// After an interruption: the original is whole in the app dir, or the
/// share target is complete; never a partial target.
#[track_caller]
fn assert_whole_somewhere(
    sb: &Sandbox,
    before: &std::collections::BTreeMap<std::path::PathBuf, Node>,
) {
    let app = sb.app.join("data");
    let target = sb.share.join("data");
    if target.exists() {
        assert_eq!(
            &snapshot(&target),
            before,
            "share target visible but incomplete"
        );
        // Whatever is left of the app dir is a subset of the original.
        if lmeta(&app).is_dir() {
            for (p, n) in snapshot(&app) {
                assert_eq!(before.get(&p), Some(&n), "{}", p.display());
            }
        }
    } else {
        assert_eq!(&snapshot(&app), before, "app dir changed before the commit");
    }
}

#[test]
fn sigterm_during_link_stops_at_a_safe_point_and_rerun_completes() {
    if !in_private_mount_ns!("sigterm_during_link_stops_at_a_safe_point_and_rerun_completes") {
        return;
    }
    let staging = |sb: &Sandbox| sb.share.join(".data.sharelink-staging");
    let mut interrupted = 0;
    for attempt in 0..5 {
        let (sb, before) = big_tree_sandbox("\"data\" = \"data\"", 100 + attempt);
        let st = staging(&sb);
        let (sent, o) = signal_when(&sb, &["link"], nix::sys::signal::Signal::SIGTERM, || {
            st.exists()
        });
        match o.status.code() {
            Some(143) => {
                assert!(sent);
                interrupted += 1;
                assert!(stderr(&o).contains("SIGTERM"), "{}", stderr(&o));
                assert_whole_somewhere(&sb, &before);
                assert!(!sb.share.join("data").exists(), "signalled while staging");
                assert!(lmeta(&sb.app.join("data")).is_dir());
                expect_code(&sb.run(["status"]), 1);
            }
            // The copy finished before the signal was looked at: fine, but
            // it must then be a complete, successful run.
            Some(0) => {}
            _ => panic!("attempt {attempt}: {o:?}\n{}", stderr(&o)),
        }
        let o = sb.run(["link"]);
        expect_code(&o, 0);
        assert_eq!(snapshot(&sb.share.join("data")), before);
        assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
        expect_code(&sb.run(["status"]), 0);
        if interrupted >= 2 {
            break;
        }
    }
    eprintln!("interrupted {interrupted} migrations");
    assert!(interrupted > 0, "never managed to interrupt a migration");
}

#[test]
fn signal_during_prune_leaves_a_complete_share_and_rerun_finishes() {
    if !in_private_mount_ns!("signal_during_prune_leaves_a_complete_share_and_rerun_finishes") {
        return;
    }
    // Signalled once the target is committed: the app dir is being deleted.
    let mut seen = 0;
    for attempt in 0..5 {
        let (sb, before) = big_tree_sandbox("\"data\" = \"data\"", 200 + attempt);
        let target = sb.share.join("data");
        let (_, o) = signal_when(&sb, &["link"], nix::sys::signal::Signal::SIGINT, || {
            target.exists()
        });
        match o.status.code() {
            Some(130) => {
                seen += 1;
                assert_whole_somewhere(&sb, &before);
            }
            Some(0) => {}
            _ => panic!("attempt {attempt}: {o:?}\n{}", stderr(&o)),
        }
        let o = sb.run(["link"]);
        expect_code(&o, 0);
        assert!(
            !stderr(&o).contains("displaced"),
            "nothing is app-only: {}",
            stderr(&o)
        );
        assert!(!sb.share.join(".sharelink/displaced").exists());
        assert_eq!(snapshot(&sb.share.join("data")), before);
        assert_eq!(fs::read_link(sb.app.join("data")).unwrap(), target);
        if seen > 0 {
            break;
        }
    }
    eprintln!("interrupted {seen} prunes");
    assert!(seen > 0, "never interrupted the prune");
}

#[test]
fn signal_while_run_is_linking_never_starts_the_command() {
    if !in_private_mount_ns!("signal_while_run_is_linking_never_starts_the_command") {
        return;
    }
    use nix::sys::signal::Signal;
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let mut interrupted = false;
        for attempt in 0..4 {
            let (sb, before) = big_tree_sandbox("\"data\" = \"data\"", 300 + attempt);
            let marker = sb.root.path().join("command-started");
            let st = sb.share.join(".data.sharelink-staging");
            let script = format!("touch '{}'", marker.display());
            let (_, o) = signal_when(&sb, &["run", "--", "sh", "-c", &script], sig, || {
                st.exists()
            });
            if o.status.code() != Some(128 + sig as i32) {
                // Linking won the race; try again with a fresh tree.
                continue;
            }
            interrupted = true;
            eprintln!("{sig}: interrupted at attempt {attempt}");
            assert!(
                !marker.exists(),
                "{sig}: COMMAND started after an interrupted link"
            );
            assert_whole_somewhere(&sb, &before);
            let o = sb.run(["link"]);
            expect_code(&o, 0);
            assert_eq!(snapshot(&sb.share.join("data")), before);
            break;
        }
        assert!(interrupted, "{sig}: never interrupted `run` while linking");
    }
}

/// Killed right after the commit, then an app file changes before the next
/// run (a manual re-run killed, a sidecar writing): the share's file is
/// still this migration's own untouched copy (the staging journal says so),
/// so the newer app version replaces it, and nothing needs setting aside.
/// A file someone changed on the share meanwhile is not ours any more: the
/// app's version of that one is set aside.
#[test]
#[cfg(feature = "failpoints")]
fn a_file_changed_after_a_kill_past_the_commit_replaces_our_own_copy() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (app, target) = (sb.app.join("data"), sb.share.join("data"));
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("mine.txt"), "v1\n").unwrap();
    fs::write(app.join("theirs.txt"), "v1\n").unwrap();
    fs::write(app.join("same.txt"), "unchanged\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let o = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", "commit.synced")
        .output()
        .unwrap();
    expect_code(&o, 137);
    assert_eq!(fs::read_to_string(target.join("mine.txt")).unwrap(), "v1\n");
    fs::write(app.join("mine.txt"), "v2, written after the kill\n").unwrap();
    fs::write(app.join("theirs.txt"), "v2 in the app\n").unwrap();
    fs::write(target.join("theirs.txt"), "v2 on the share\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(fs::read_link(&app).unwrap(), target);
    assert_eq!(
        fs::read_to_string(target.join("mine.txt")).unwrap(),
        "v2, written after the kill\n"
    );
    assert_eq!(
        fs::read_to_string(target.join("theirs.txt")).unwrap(),
        "v2 on the share\n"
    );
    assert_eq!(
        fs::read_to_string(target.join("same.txt")).unwrap(),
        "unchanged\n"
    );
    let kept = displaced(&sb.share, "data");
    let kept: Vec<String> = kept
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("theirs.txt")).ok())
        .collect();
    assert_eq!(kept, ["v2 in the app\n"], "{}", stderr(&o));
    for d in displaced(&sb.share, "data") {
        assert!(
            !d.join("mine.txt").exists(),
            "our own copy's file set aside"
        );
    }
}

/// Signals sharelink was started with ignored do not stop linking:
/// `nohup sharelink run …` keeps waiting for the share through a hang-up,
/// as `sharelink run … &` in a script does through Ctrl-C (the shell
/// ignores SIGINT and SIGQUIT for it). Without `nohup` the hang-up stops it.
#[test]
fn signals_ignored_at_start_do_not_stop_linking() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    sb.write_config_with(true, "mount_timeout = \"2s\"", "\"data\" = \"data\"");
    fs::create_dir_all(sb.app.join("data")).unwrap();
    for (wrapper, sig, want) in [
        (Some("nohup"), libc::SIGHUP, 69),
        (Some("sh-bg"), libc::SIGINT, 69),
        (None, libc::SIGHUP, 128 + libc::SIGHUP),
    ] {
        let mut c = match wrapper {
            Some("nohup") => std::process::Command::new("nohup"),
            // A non-interactive shell starts background jobs with SIGINT
            // and SIGQUIT ignored.
            Some(_) => {
                let mut c = std::process::Command::new("sh");
                c.args(["-c", "\"$@\" & wait $!", "sh"]);
                c
            }
            None => std::process::Command::new("env"),
        };
        c.default_signals();
        c.arg(bin())
            .arg("--config")
            .arg(&sb.config)
            .args(["run", "--", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // Before the spawn: sharelink may start its 2 s wait before this
        // thread runs again after it.
        let started = std::time::Instant::now();
        let child = c.spawn().unwrap();
        // The sharelink process: the child itself, or the shell's child.
        let pid = wait_for_sharelink(child.id());
        std::thread::sleep(std::time::Duration::from_millis(500));
        unsafe { libc::kill(pid, sig) };
        let o = child.wait_with_output().unwrap();
        let what = format!("{wrapper:?}, signal {sig}");
        assert_eq!(o.status.code(), Some(want), "{what}: {}", stderr(&o));
        if want == 69 {
            let waited = started.elapsed();
            assert!(
                waited >= std::time::Duration::from_secs(2),
                "{what}: exited after {waited:?}: {}",
                stderr(&o)
            );
        }
    }
}

/// The pid of the sharelink process started as `pid` or as its child.
fn wait_for_sharelink(pid: u32) -> i32 {
    let exe = fs::canonicalize(bin()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut cands = vec![pid as i32];
        if let Ok(kids) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            cands.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
        for p in cands {
            if fs::read_link(format!("/proc/{p}/exe")).ok().as_deref() == Some(exe.as_path()) {
                return p;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sharelink did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The staging journal lives on the share, where any container's
/// migration may have written it: it vouches for "our own copy" only in
/// the container that committed it. Here container A (killed after its
/// commit) copied `model.bin` v1; container B, of another image version
/// whose file has the same inode number (image layers unpacked alike) and
/// other bytes, must set its version aside, not replace A's copy: the
/// share's v1 is the only one left.
#[test]
fn another_containers_journal_does_not_make_its_copy_ours() {
    if !in_private_mount_ns!("another_containers_journal_does_not_make_its_copy_ours") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let base = root.path();
    mount_tmpfs(base, "64m");
    let lower = base.join("lower");
    fs::create_dir_all(lower.join("data")).unwrap();
    fs::write(lower.join("data/model.bin"), "v1 from image 1\n").unwrap();
    let share = base.join("share");
    fs::create_dir_all(&share).unwrap();
    let a = mount_overlay(&base.join("a"), &lower);
    let b = mount_overlay(&base.join("b"), &lower);
    let cfg = |app: &std::path::Path, name: &str| {
        let c = base.join(name);
        fs::write(
            &c,
            config_text(app, &share, false, "", "\"data\" = \"data\""),
        )
        .unwrap();
        c
    };
    let (ca, cb) = (cfg(&a, "a.toml"), cfg(&b, "b.toml"));
    std::thread::sleep(std::time::Duration::from_millis(150));
    let o = sharelink(&ca)
        .arg("link")
        .env("SHARELINK_FAILPOINT", "commit.synced")
        .output()
        .unwrap();
    assert_eq!(code(&o), 137, "{}", stderr(&o));
    // The next image version: same inode, other bytes.
    fs::write(lower.join("data/model.bin"), "v2 from image 2\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let o = sharelink(&cb).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert_eq!(
        fs::read_to_string(share.join("data/model.bin")).unwrap(),
        "v1 from image 1\n"
    );
    let kept: Vec<String> = displaced(&share, "data")
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("model.bin")).ok())
        .collect();
    assert_eq!(kept, ["v2 from image 2\n"], "{}", stderr(&o));
}
