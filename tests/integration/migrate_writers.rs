//! Processes writing into a data directory while `sharelink link` migrates
//! it (a manual re-run in a running container, a sidecar): nothing they
//! wrote may be lost.

use crate::support::*;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The contents of `rel` wherever it ended up: the share target and every
/// set-aside copy.
fn versions(share: &Path, target: &Path, rel: &str) -> Vec<String> {
    let mut v = Vec::new();
    for dir in std::iter::once(target.to_path_buf()).chain(displaced(share, "data")) {
        if let Ok(s) = fs::read_to_string(dir.join(rel)) {
            v.push(s);
        }
    }
    v
}

/// What the writer managed to write (only what the kernel accepted).
#[derive(Default)]
struct Written {
    lines: usize,
    files: Vec<usize>,
    rewrites: Vec<String>,
}

/// A writer doing what pipelines do through the app path: append lines
/// (open, write, close), create new files, rewrite a baked file in place.
fn writer(app: PathBuf, stop: Arc<AtomicBool>) -> Written {
    let mut w = Written::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let line = format!("line {}\n", w.lines);
        if fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(app.join("log.txt"))
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .is_ok()
        {
            w.lines += 1;
        }
        if i % 3 == 0 && fs::write(app.join(format!("new/f{i}")), format!("new file {i}")).is_ok() {
            w.files.push(i);
        }
        if i % 7 == 0 {
            let text = format!("rewritten {i}");
            if fs::write(app.join("baked/rewritten.txt"), &text).is_ok() {
                w.rewrites.push(text);
            }
        }
        std::thread::sleep(Duration::from_micros(700));
    }
    w
}

/// A writer runs all through a migration; then it stops and a re-run
/// finishes. Every line, file and rewrite it got accepted must be in the
/// share target or set aside; nothing of the baked data is lost.
#[test]
fn writes_during_a_migration_are_never_lost() {
    for round in 0..3 {
        let sb = Sandbox::new("\"data\" = \"data\"");
        let (app, target) = (sb.app.join("data"), sb.share.join("data"));
        make_tree(&app.join("baked"), 1500, 20_000, 40 + round);
        fs::write(app.join("baked/rewritten.txt"), "baked version").unwrap();
        fs::create_dir_all(app.join("new")).unwrap();
        let baked = snapshot(&app.join("baked"));
        std::thread::sleep(Duration::from_millis(150));
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (app, stop) = (app.clone(), stop.clone());
            std::thread::spawn(move || writer(app, stop))
        };
        std::thread::sleep(Duration::from_millis(20));
        let first = sb
            .cmd()
            .arg("link")
            .env("SHARELINK_PARALLELISM", "2")
            .output()
            .unwrap();
        // It may finish (the writer's files then land in the share through
        // the link) or give up on what keeps changing (74), app side kept.
        assert!(matches!(code(&first), 0 | 74), "{}", stderr(&first));
        std::thread::sleep(Duration::from_millis(30));
        stop.store(true, Ordering::Relaxed);
        let written = w.join().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let again = sb.run(["link"]);
        expect_code(&again, 0);
        assert_eq!(fs::read_link(&app).unwrap(), target);
        // Nothing of the baked data lost: on the share, or set aside.
        let now = snapshot(&target.join("baked"));
        for (p, n) in &baked {
            if *n == Node::Dir || p == Path::new("rewritten.txt") {
                continue;
            }
            let here = now.get(p).is_some_and(|t| t.same_content(n));
            assert!(here, "round {round}: baked {} lost", p.display());
        }
        // Every line appended, somewhere (the log's newest version holds
        // them all; older versions may have been set aside).
        let logs = versions(&sb.share, &target, "log.txt").join("");
        for l in 0..written.lines {
            assert!(
                logs.contains(&format!("line {l}\n")),
                "round {round}: line {l} of {} lost",
                written.lines
            );
        }
        for i in &written.files {
            let v = versions(&sb.share, &target, &format!("new/f{i}"));
            assert!(
                v.contains(&format!("new file {i}")),
                "round {round}: new/f{i} lost: {v:?}"
            );
        }
        // The last rewrite is the file on the share; none is lost outright.
        if let Some(last) = written.rewrites.last() {
            assert_eq!(
                &fs::read_to_string(target.join("baked/rewritten.txt")).unwrap(),
                last,
                "round {round}"
            );
        }
        assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
        eprintln!(
            "round {round}: first run exit {}, {} lines, {} new files, {} rewrites, all kept",
            code(&first),
            written.lines,
            written.files.len(),
            written.rewrites.len()
        );
    }
}

/// A file another process holds open for writing is never deleted under
/// it: the run stops (74) naming it, and finishes once it is closed.
#[test]
fn a_file_held_open_for_writing_is_kept() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (app, target) = (sb.app.join("data"), sb.share.join("data"));
    make_tree(&app, 50, 1000, 7);
    let mut held = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(app.join("held.log"))
        .unwrap();
    held.write_all(b"before\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let o = sb.run(["link"]);
    expect_code(&o, 74);
    let err = stderr(&o);
    assert!(err.contains("held.log (open for writing)"), "{err}");
    assert_eq!(
        fs::read_to_string(app.join("held.log")).unwrap(),
        "before\n"
    );
    held.write_all(b"after\n").unwrap();
    drop(held);
    std::thread::sleep(Duration::from_millis(150));
    expect_code(&sb.run(["link"]), 0);
    assert_eq!(fs::read_link(&app).unwrap(), target);
    assert_eq!(
        fs::read_to_string(target.join("held.log")).unwrap(),
        "before\nafter\n"
    );
}

/// Replacing our own older copy on the share with a newer version of the
/// app file replaces exactly the copy that was checked: a file another
/// writer puts at that share path between the check and the rename stays,
/// and the app's newer version is set aside. Before, the rename replaced
/// whatever was there by then.
#[test]
#[cfg(feature = "failpoints")]
fn replacing_our_older_copy_never_overwrites_what_another_writer_put_there() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (app, target) = (sb.app.join("data"), sb.share.join("data"));
    make_tree(&app, 20, 1000, 7);
    let mut held = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(app.join("held.log"))
        .unwrap();
    held.write_all(b"before\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // Our copy of `held.log` is on the share; the app file stays (open).
    expect_code(&sb.run(["link"]), 74);
    held.write_all(b"after\n").unwrap();
    drop(held);
    std::thread::sleep(Duration::from_millis(150));
    let child = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", "replace.checked:1:stop")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_stopped(pid, Duration::from_secs(30));
    // Another replica's pipeline writes that file on the share.
    fs::write(target.join(".other.tmp"), "another writer's\n").unwrap();
    fs::rename(target.join(".other.tmp"), target.join("held.log")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    expect_code(&o, 0);
    assert_eq!(
        fs::read_to_string(target.join("held.log")).unwrap(),
        "another writer's\n",
        "{}",
        stderr(&o)
    );
    let all = versions(&sb.share, &target, "held.log");
    assert!(all.contains(&"before\nafter\n".to_string()), "{all:?}");
}

/// A replace killed between its two renames, right after another writer
/// put its own file at that share path (between the check and the first
/// rename): what was moved aside into the staging directory is that
/// writer's file. `then` runs before the next `link`; returns the sandbox
/// and that run's output.
#[cfg(feature = "failpoints")]
fn replace_killed_after_moving_another_writers_file_aside(
    then: impl FnOnce(&Path),
) -> (Sandbox, std::process::Output) {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (app, target) = (sb.app.join("data"), sb.share.join("data"));
    make_tree(&app, 20, 1000, 7);
    let mut held = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(app.join("held.log"))
        .unwrap();
    held.write_all(b"before\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // Our copy of `held.log` is on the share; the app file stays (open).
    expect_code(&sb.run(["link"]), 74);
    held.write_all(b"after\n").unwrap();
    drop(held);
    std::thread::sleep(Duration::from_millis(150));
    let child = sb
        .cmd()
        .arg("link")
        .env(
            "SHARELINK_FAILPOINT",
            "replace.checked:1:stop,replace.aside:1",
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_stopped(pid, Duration::from_secs(30));
    // Another replica's pipeline writes that file on the share.
    fs::write(target.join(".other.tmp"), "another writer's\n").unwrap();
    fs::rename(target.join(".other.tmp"), target.join("held.log")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 137, "{}", stderr(&o));
    assert!(
        !target.join("held.log").exists(),
        "the first rename moved it aside"
    );
    then(&target);
    let o = sb.run(["link"]);
    (sb, o)
}

/// What a killed replace moved aside is put back where the share's entry
/// is still missing: the other writer's file is at its path again, and
/// the app's newer version is set aside. Before, the next run's clean-up
/// removed it with the staging directory.
#[test]
#[cfg(feature = "failpoints")]
fn a_replace_killed_between_its_renames_puts_back_what_it_moved_aside() {
    let (sb, o) = replace_killed_after_moving_another_writers_file_aside(|_| {});
    expect_code(&o, 0);
    let target = sb.share.join("data");
    assert_eq!(fs::read_link(sb.app.join("data")).unwrap(), target);
    assert_eq!(
        fs::read_to_string(target.join("held.log")).ok().as_deref(),
        Some("another writer's\n"),
        "{}",
        stderr(&o)
    );
    let all = versions(&sb.share, &target, "held.log");
    assert!(all.contains(&"before\nafter\n".to_string()), "{all:?}");
    assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
}

/// Where the share's entry was made again meanwhile, what the killed
/// replace moved aside is kept under `displaced/`: all three versions
/// exist.
#[test]
#[cfg(feature = "failpoints")]
fn a_replace_killed_between_its_renames_keeps_what_it_moved_aside_when_the_name_is_taken() {
    let (sb, o) = replace_killed_after_moving_another_writers_file_aside(|target| {
        fs::write(target.join("held.log"), "a third writer's\n").unwrap();
    });
    expect_code(&o, 0);
    let target = sb.share.join("data");
    assert_eq!(
        fs::read_to_string(target.join("held.log")).ok().as_deref(),
        Some("a third writer's\n"),
        "{}",
        stderr(&o)
    );
    let all = versions(&sb.share, &target, "held.log");
    for want in ["another writer's\n", "before\nafter\n"] {
        assert!(
            all.contains(&want.to_string()),
            "{want:?} lost: {all:?}\n{}",
            stderr(&o)
        );
    }
    assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
}

/// A writer whose open found the name before the unlink and reaches the
/// file only after it (its thread preempted in between; seen on a busy
/// machine, an open of 51 us that got a file with no name and no lease to
/// break). Here the writer reaches that same inode after the unlink through
/// sharelink's own descriptor of it (`/proc/<pid>/fd/<n>`), while sharelink
/// is stopped right after the unlink: before, the lease was already
/// released there, the open went through unseen and what it wrote went with
/// the nameless file; now the lease is still held, the open waits for it,
/// and the content is put back.
#[test]
#[cfg(feature = "failpoints")]
fn a_writer_reaching_a_file_just_after_its_unlink_gets_its_data_kept() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let app = sb.app.join("data");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("journal.txt"), "baked\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let child = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", "prune.unlinked:1:stop")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_stopped(pid, Duration::from_secs(30));
    assert!(!app.join("journal.txt").exists(), "unlinked");
    // sharelink's descriptor of the unlinked file.
    let fd = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            fs::read_link(p).is_ok_and(|t| {
                let t = t.to_string_lossy().into_owned();
                t.contains("journal.txt") && t.ends_with("(deleted)")
            })
        })
        .expect("sharelink holds the unlinked file open");
    let w = std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().append(true).open(&fd).unwrap();
        f.write_all(b"written after the unlink\n").unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    w.join().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(matches!(code(&o), 0 | 74), "{err}");
    std::thread::sleep(Duration::from_millis(150));
    expect_code(&sb.run(["link"]), 0);
    let all = versions(&sb.share, &sb.share.join("data"), "journal.txt").join("");
    assert!(
        all.contains("baked\nwritten after the unlink\n"),
        "lost: {all:?}\n{err}"
    );
}

/// The remaining window of the previous test: sharelink is SIGKILLed
/// while that writer waits for the lease it holds after the unlink. The
/// lease belongs to the open file description, and the guardian (a
/// process sharelink starts at the first held lease, holding duplicates
/// of the held descriptors) keeps it: once sharelink is gone it lets the
/// writer in, waits for it to close the file, puts the content back under
/// its name, and exits. Without the guardian the lease went with
/// sharelink's descriptor and the writer wrote into a file nobody sees.
#[cfg(feature = "failpoints")]
fn killed_while_a_writer_waits_after_the_unlink(guardian: bool) -> Option<String> {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let app = sb.app.join("data");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("journal.txt"), "baked\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let mut cmd = sb.cmd();
    cmd.arg("link")
        .env("SHARELINK_FAILPOINT", "prune.unlinked:1:stop")
        .stderr(std::process::Stdio::null());
    if !guardian {
        cmd.env("SHARELINK_GUARDIAN", "off");
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    wait_stopped(pid, Duration::from_secs(30));
    assert!(!app.join("journal.txt").exists(), "unlinked");
    // The guardian: sharelink's child.
    let kids: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|p: &u32| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|st| {
                let after = &st[st.rfind(')').unwrap() + 2..];
                after.split(' ').nth(1) == Some(&pid.to_string())
            })
        })
        .collect();
    assert_eq!(kids.len(), usize::from(guardian), "{kids:?}");
    let fd = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            fs::read_link(p).is_ok_and(|t| {
                let t = t.to_string_lossy().into_owned();
                t.contains("journal.txt") && t.ends_with("(deleted)")
            })
        })
        .expect("sharelink holds the unlinked file open");
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let w = std::thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid()).unwrap();
        let mut f = fs::OpenOptions::new().append(true).open(&fd).unwrap();
        f.write_all(b"written after the unlink\n").unwrap();
    });
    let wchan = format!("/proc/self/task/{}/wchan", tid_rx.recv().unwrap());
    wait_for(
        "the writer to wait for the lease",
        Duration::from_secs(10),
        || fs::read_to_string(&wchan).is_ok_and(|w| w.contains("lease")),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    w.join().unwrap();
    let gone = |p: &u32| {
        fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |st| {
            let after = &st[st.rfind(')').unwrap() + 2..];
            after.starts_with('Z') || after.starts_with('X')
        })
    };
    wait_for("the guardian to exit", Duration::from_secs(10), || {
        kids.iter().all(gone)
    });
    let back = fs::read_to_string(app.join("journal.txt")).ok();
    if back.is_some() {
        std::thread::sleep(Duration::from_millis(150));
        expect_code(&sb.run(["link"]), 0);
        let all = versions(&sb.share, &sb.share.join("data"), "journal.txt").join("");
        assert!(all.contains("baked\nwritten after the unlink\n"), "{all:?}");
    }
    back
}

#[test]
#[cfg(feature = "failpoints")]
fn killed_while_a_writer_waits_after_the_unlink_its_data_is_put_back_by_the_guardian() {
    assert_eq!(
        killed_while_a_writer_waits_after_the_unlink(true).as_deref(),
        Some("baked\nwritten after the unlink\n")
    );
}

/// The same without the guardian: what the writer wrote is lost (the test
/// above tells something only because this one fails to keep it).
#[test]
#[cfg(feature = "failpoints")]
fn killed_while_a_writer_waits_after_the_unlink_without_the_guardian_its_data_is_lost() {
    assert_eq!(killed_while_a_writer_waits_after_the_unlink(false), None);
}

/// The narrowest race: a writer opens a file in the instant sharelink
/// deletes it (sharelink is stopped right there, holding the file's lease;
/// the writer's open waits for it). `write` then runs with the file open.
/// Returns the `link` process, running again, and the writer thread.
#[cfg(feature = "failpoints")]
fn race_a_writer(
    sb: &Sandbox,
    write: impl FnOnce(fs::File) + Send + 'static,
) -> (std::process::Child, std::thread::JoinHandle<()>) {
    let (child, w) = writer_waits_for_the_lease(sb, "prune.leased:1:stop", write);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    (child, w)
}

/// `link`, stopped at `failpoint` while it holds the lease of
/// `journal.txt`, and a writer whose open of that file waits for the
/// lease; `write` runs once the open returns.
#[cfg(feature = "failpoints")]
fn writer_waits_for_the_lease(
    sb: &Sandbox,
    failpoint: &str,
    write: impl FnOnce(fs::File) + Send + 'static,
) -> (std::process::Child, std::thread::JoinHandle<()>) {
    let app = sb.app.join("data");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("journal.txt"), "baked\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let child = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", failpoint)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_stopped(pid, Duration::from_secs(30));
    // The writer's open blocks on the lease.
    let path = app.join("journal.txt");
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let w = std::thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid()).unwrap();
        write(fs::OpenOptions::new().append(true).open(&path).unwrap());
    });
    // This writer's thread (other tests race writers of their own).
    let wchan = format!("/proc/self/task/{}/wchan", tid_rx.recv().unwrap());
    wait_for(
        "the writer to wait for the lease",
        Duration::from_secs(10),
        || fs::read_to_string(&wchan).is_ok_and(|w| w.contains("lease")),
    );
    (child, w)
}

#[test]
#[cfg(feature = "failpoints")]
fn a_writer_opening_a_file_while_it_is_deleted_gets_its_data_kept() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (child, w) = race_a_writer(&sb, |mut f| {
        f.write_all(b"written while it was deleted\n").unwrap();
    });
    w.join().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(err.contains("while sharelink was deleting it"), "{err}");
    assert!(matches!(code(&o), 0 | 74), "{err}");
    std::thread::sleep(Duration::from_millis(150));
    expect_code(&sb.run(["link"]), 0);
    let all = versions(&sb.share, &sb.share.join("data"), "journal.txt").join("");
    assert!(all.contains("written while it was deleted"), "{all:?}");
}

/// However long that writer keeps the file open, it writes into the file
/// under its name: sharelink saw the writer waiting for the lease before
/// it unlinked the file, so the file stays; later passes keep it (open for
/// writing) and the run exits 74; the next run moves everything written.
#[test]
#[cfg(feature = "failpoints")]
fn a_writer_holding_that_file_for_long_writes_into_it_under_its_name() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (child, w) = race_a_writer(&sb, move |mut f| {
        f.write_all(b"first line, at once\n").unwrap();
        let _ = done_rx.recv();
        f.write_all(b"second line, after sharelink exited\n")
            .unwrap();
    });
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(err.contains("the file stays in place"), "{err}");
    assert_eq!(code(&o), 74, "{err}");
    assert!(err.contains("open for writing"), "{err}");
    assert_eq!(
        fs::read_to_string(sb.app.join("data/journal.txt")).unwrap(),
        "baked\nfirst line, at once\n"
    );
    done_tx.send(()).unwrap();
    w.join().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    expect_code(&sb.run(["link"]), 0);
    let all = versions(&sb.share, &sb.share.join("data"), "journal.txt").join("");
    assert!(
        all.contains("baked\nfirst line, at once\nsecond line, after sharelink exited\n"),
        "{all:?}"
    );
}

/// Stopped (SIGTERM) while that writer still holds the file, sharelink
/// exits 143 with the file under its name, holding what was written.
#[test]
#[cfg(feature = "failpoints")]
fn stopped_while_that_writer_holds_the_file_it_is_under_its_name() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (wrote_tx, wrote_rx) = std::sync::mpsc::channel::<()>();
    let (child, w) = race_a_writer(&sb, move |mut f| {
        f.write_all(b"written while it was deleted\n").unwrap();
        wrote_tx.send(()).unwrap();
        // Held open until the test is done.
        let _ = done_rx.recv();
        drop(f);
    });
    wrote_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(code(&o), 143, "{err}");
    let back = sb.app.join("data/journal.txt");
    assert_eq!(
        fs::read_to_string(&back).unwrap(),
        "baked\nwritten while it was deleted\n",
        "{err}"
    );
    done_tx.send(()).unwrap();
    w.join().unwrap();
}

/// SIGKILLed while a writer holds the file it was deleting (the writer's
/// open came while sharelink held the lease to delete it, and the writer
/// keeps writing), sharelink loses nothing: the file has its name
/// throughout, and the next run moves it with everything written. Before,
/// sharelink unlinked the file first and looked for the writer after: the
/// writer had the inode whose name was gone, sharelink waited to copy it
/// back, and the kill lost every line written to it.
#[test]
#[cfg(feature = "failpoints")]
fn killed_while_a_writer_holds_the_file_it_was_deleting_loses_nothing() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (wrote_tx, wrote_rx) = std::sync::mpsc::channel::<()>();
    let (mut child, w) = race_a_writer(&sb, move |mut f| {
        f.write_all(b"first line, as it was deleted\n").unwrap();
        wrote_tx.send(()).unwrap();
        let _ = go_rx.recv();
        f.write_all(b"second line, after the kill\n").unwrap();
    });
    wrote_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    go_tx.send(()).unwrap();
    w.join().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let again = sb.run(["link"]);
    expect_code(&again, 0);
    let all = versions(&sb.share, &sb.share.join("data"), "journal.txt").join("");
    assert!(
        all.contains("baked\nfirst line, as it was deleted\nsecond line, after the kill\n"),
        "{all:?}\nkilled run: {}\nnext run: {}",
        stderr(&o),
        stderr(&again)
    );
}

/// A file moved into the share and deleted from the app, then made anew
/// under the same name by a writer (`echo line >> log` after sharelink
/// took `log`): the new file is another file, not a newer version of the
/// one copied, so both are kept. Before, the next pass (or run) took the
/// share's copy for its own outdated copy and replaced it: the original
/// lines were gone. On ext4 (as here) the new file may even get the old
/// one's inode number. `kill`: the run is killed after deleting, and the
/// next run must not trust the journal either.
#[cfg(feature = "failpoints")]
fn recreated_after_its_copy_was_deleted(kill: bool) {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (app, target) = (sb.app.join("data"), sb.share.join("data"));
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("log"), "ORIGINAL line 1\n").unwrap();
    fs::write(app.join("busy"), "held open\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // Held open for writing: the first pass keeps it, so there is a second.
    let busy = fs::OpenOptions::new()
        .append(true)
        .open(app.join("busy"))
        .unwrap();
    let point = if kill {
        "prune.done"
    } else {
        "prune.done:1:stop"
    };
    let mut child = Some(
        sb.cmd()
            .arg("link")
            .env("SHARELINK_FAILPOINT", point)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.as_ref().unwrap().id();
    if kill {
        let o = child.take().unwrap().wait_with_output().unwrap();
        assert_eq!(code(&o), 137, "{}", stderr(&o));
    } else {
        wait_stopped(pid, Duration::from_secs(30));
    }
    assert!(!app.join("log").exists(), "the first pass deleted log");
    fs::write(app.join("log"), "appended line 2\n").unwrap();
    drop(busy);
    if kill {
        std::thread::sleep(Duration::from_millis(150));
        expect_code(&sb.run(["link"]), 0);
    } else {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
        let o = child.take().unwrap().wait_with_output().unwrap();
        // Either the run finished, or the writer's file was still too
        // fresh and the next run finishes.
        if o.status.code() != Some(0) {
            std::thread::sleep(Duration::from_millis(150));
            expect_code(&sb.run(["link"]), 0);
        }
    }
    let mut got = versions(&sb.share, &target, "log");
    got.sort();
    assert_eq!(got, ["ORIGINAL line 1\n", "appended line 2\n"]);
}

#[test]
#[cfg(feature = "failpoints")]
fn a_file_made_anew_after_its_copy_was_deleted_keeps_both() {
    recreated_after_its_copy_was_deleted(false);
}

#[test]
#[cfg(feature = "failpoints")]
fn a_file_made_anew_after_a_kill_past_its_deletion_keeps_both() {
    recreated_after_its_copy_was_deleted(true);
}

/// The marker beside the app directory names this container's copies of
/// entries still in it. A run that then deletes one of them and is killed
/// must not leave the marker vouching for that name: on ext4 the file an
/// application makes anew there gets the same inode number, and passed for
/// a newer version of our copy, which it replaced (the only copy of the
/// original). Now it is set aside.
#[test]
#[cfg(feature = "failpoints")]
fn the_marker_never_vouches_for_an_entry_deleted_before_a_kill() {
    if !in_private_mount_ns!("the_marker_never_vouches_for_an_entry_deleted_before_a_kill") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let img = root.path().join("app.img");
    let (app_root, share) = (root.path().join("app"), root.path().join("share"));
    fs::create_dir_all(&app_root).unwrap();
    sh(&format!(
        "truncate -s 64M '{0}' && mkfs.ext4 -q -F '{0}' && mount -o loop '{0}' '{1}'",
        img.display(),
        app_root.display()
    ));
    mount_tmpfs(&share, "64m");
    let app = app_root.join("data");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("X"), "ORIGINAL precious v1\n").unwrap();
    fs::write(app.join("Y"), "other\n").unwrap();
    let cfg = root.path().join("sharelink.toml");
    fs::write(
        &cfg,
        config_text(&app_root, &share, false, "", "\"data\" = \"data\""),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // Run 1: X held open for writing through every pass: 74, and the
    // marker records our copy of X.
    let held = fs::OpenOptions::new()
        .append(true)
        .open(app.join("X"))
        .unwrap();
    expect_code(&sharelink(&cfg).arg("link").output().unwrap(), 74);
    drop(held);
    // Run 2 deletes X (identical on the share) and is killed.
    let o = sharelink(&cfg)
        .arg("link")
        .env("SHARELINK_FAILPOINT", "prune.done")
        .output()
        .unwrap();
    assert_eq!(code(&o), 137, "{}", stderr(&o));
    assert!(!app.join("X").exists());
    fs::write(app.join("X"), "NEW file made after the delete\n").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    expect_code(&sharelink(&cfg).arg("link").output().unwrap(), 0);
    let mut got = versions(&share, &share.join("data"), "X");
    got.sort();
    assert_eq!(
        got,
        ["NEW file made after the delete\n", "ORIGINAL precious v1\n"]
    );
    umount(&app_root);
}
