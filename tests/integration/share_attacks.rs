//! A co-tenant of the share attacks root sharelink: whoever can write into
//! the share (any replica's pipeline) plants symlinks and swaps directories
//! in the lock directory and in share path components, before and while
//! sharelink works. Nothing outside the share may be created, changed,
//! chowned or read into the log. Racers swap with `RENAME_EXCHANGE` in a
//! loop; the deterministic cases freeze sharelink at a failpoint instead.

use crate::support::*;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn need_failpoints() {
    if !crate::support::api::FAILPOINTS_ENABLED {
        panic!("build with --features failpoints (the documented test command)");
    }
}

const SECRET: &str = "root:$6$SECRET-HASH-NEVER-LOGGED:19000:0:99999:7:::";

/// Files outside the share that must stay as they are: a root-only file
/// (as /etc/shadow is) and an empty directory a swapped component points
/// at.
struct Outside {
    victim: PathBuf,
    target: PathBuf,
}

impl Outside {
    fn new(sb: &Sandbox) -> Outside {
        let victim = sb.path("outside/victim");
        let target = sb.path("outside/target");
        fs::create_dir_all(&target).unwrap();
        fs::write(&victim, SECRET).unwrap();
        fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        Outside { victim, target }
    }

    #[track_caller]
    fn untouched(&self, log: &str) {
        assert_eq!(
            fs::read_to_string(&self.victim).unwrap(),
            SECRET,
            "the file outside the share was written"
        );
        let m = fs::metadata(&self.victim).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o600));
        assert_eq!(
            names(&self.target),
            Vec::<String>::new(),
            "something was created outside the share"
        );
        let t = fs::metadata(&self.target).unwrap();
        assert_eq!(
            (t.uid(), t.gid()),
            (0, 0),
            "the outside directory was chowned"
        );
        assert!(
            !log.contains("SECRET-HASH"),
            "the root-only file's content reached the log:\n{log}"
        );
    }
}

fn exchange(a: &Path, b: &Path) -> bool {
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: valid NUL-terminated paths.
    unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        ) == 0
    }
}

fn data_dir(sb: &Sandbox, files: usize) -> PathBuf {
    let data = sb.app.join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    for i in 0..files {
        fs::write(data.join(format!("sub/f{i}")), format!("file {i}\n")).unwrap();
    }
    data
}

/// Start `link` stopped at the first staged file (it holds the lock), let
/// `attack` change the lock directory, wait until a progress report is
/// due, and let it go on.
fn link_frozen_in_the_lock(sb: &Sandbox, attack: impl FnOnce(&Path)) -> std::process::Output {
    let child = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", "staging.file:1:stop")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id(), Duration::from_secs(30));
    attack(&sb.share.join(".sharelink/locks/data"));
    // Past the first progress report's delay (2 s), so that resuming
    // publishes one at once.
    std::thread::sleep(Duration::from_millis(2500));
    sh(&format!("kill -CONT {}", child.id()));
    child.wait_with_output().unwrap()
}

#[test]
fn a_progress_symlink_planted_in_the_held_lock_is_never_written_through() {
    need_failpoints();
    if !require_root("share_attacks::progress") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    let out = Outside::new(&sb);
    data_dir(&sb, 6000);
    let o = link_frozen_in_the_lock(&sb, |lock| {
        for name in [".progress", "progress"] {
            let _ = fs::remove_file(lock.join(name));
            std::os::unix::fs::symlink(&out.victim, lock.join(name)).unwrap();
        }
    });
    let log = stderr(&o);
    out.untouched(&log);
    assert!(
        log.contains("migrating:"),
        "no progress was published:\n{log}"
    );
    expect_code(&o, 0);
    assert_eq!(names(&sb.share.join("data/sub")).len(), 6000);
}

#[test]
fn a_lock_directory_swapped_for_a_look_alike_is_not_taken_for_ours() {
    need_failpoints();
    if !require_root("share_attacks::look_alike") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    let out = Outside::new(&sb);
    let data = data_dir(&sb, 6000);
    let before = snapshot(&data);
    let o = link_frozen_in_the_lock(&sb, |lock| {
        let fake = lock.with_file_name("fake");
        fs::create_dir(&fake).unwrap();
        fs::copy(lock.join("owner"), fake.join("owner")).unwrap();
        for name in [".progress", "progress"] {
            std::os::unix::fs::symlink(&out.victim, fake.join(name)).unwrap();
        }
        assert!(exchange(lock, &fake));
    });
    let log = stderr(&o);
    out.untouched(&log);
    assert_ne!(
        code(&o.status),
        0,
        "went on under a look-alike lock:\n{log}"
    );
    assert!(log.contains("taken over"), "{log}");
    // The owner of the look-alike is gone (a copy of a dead run's owner);
    // the next run breaks it and finishes, nothing lost.
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    out.untouched(&stderr(&o));
    let (_, _, _, differences) = diff(&before, &snapshot(&sb.share.join("data")), false, 10);
    assert_eq!(differences, Vec::<String>::new());
}

#[test]
fn an_owner_symlink_in_a_planted_lock_is_never_read_or_logged() {
    if !require_root("share_attacks::owner") {
        return;
    }
    for target in ["victim", "/proc/self/environ"] {
        let sb = Sandbox::new("\"data\" = \"data\"");
        let out = Outside::new(&sb);
        data_dir(&sb, 10);
        let lock = sb.share.join(".sharelink/locks/data");
        fs::create_dir_all(&lock).unwrap();
        let to = if target == "victim" {
            // Expired as a lease, so that the stale-lock path looks at it.
            sh(&format!(
                "touch -d '2 hours ago' '{}'",
                out.victim.display()
            ));
            out.victim.clone()
        } else {
            PathBuf::from(target)
        };
        std::os::unix::fs::symlink(&to, lock.join("owner")).unwrap();
        let mut cmd = sb.cmd();
        cmd.arg("link")
            .env("SHARELINK_TEST_TOKEN", "SECRET-HASH-IN-ENV");
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let status = wait_with_limit(&mut child, Duration::from_secs(60), "link");
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
        out.untouched(&log);
        assert_eq!(status.code(), Some(0), "owner -> {target}:\n{log}");
        let st = sb.run(["status"]);
        out.untouched(&stdout(&st));
    }
}

/// A share path component swapped between a directory and a symlink out
/// of the share while root `link` makes it, its `dirs` and hands them to
/// the run user.
#[test]
fn a_share_component_swapped_for_a_symlink_never_leads_outside() {
    if require_root("share_attacks::component_racer") {
        race(Racer::Component);
    }
}

/// Symlinks planted as the lock's owner, progress and temporary progress
/// files, and the lock directory swapped with a look-alike, while root
/// `link` takes, holds and releases the lock.
#[test]
fn a_lock_directory_raced_with_symlinks_and_look_alikes_never_leads_outside() {
    if require_root("share_attacks::lock_racer") {
        race(Racer::Lock);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Racer {
    Component,
    Lock,
}

/// `link` as root, many rounds, against a racer in the share. After every
/// round nothing outside the share was created, written, chowned or
/// logged, and the round's data is in the share or still in the app.
fn race(racer: Racer) {
    let rounds = knob("SHARELINK_ATTACK_ROUNDS", 1000);
    let sb = Sandbox::new("\"data\" = { share = \"proj/data\", dirs = [\"in\", \"out/deep\"] }");
    sb.write_config_with(
        false,
        "[run]\nuser = \"nobody\"\n",
        "\"data\" = { share = \"proj/data\", dirs = [\"in\", \"out/deep\"] }",
    );
    let out = Outside::new(&sb);
    let proj = sb.share.join("proj");
    let evil = sb.share.join("proj.evil");
    let lock = sb.share.join(".sharelink/locks/proj%2Fdata");
    let look_alike = sb.share.join(".sharelink/locks/look-alike");
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    // Held by the test while it lays out a round, by a racer per swap.
    let gate = Arc::new(Mutex::new(()));
    let racers: Vec<_> = [racer]
        .into_iter()
        .map(|which| {
            let (stop, swaps, gate) = (stop.clone(), swaps.clone(), gate.clone());
            let (proj, evil, lock, look_alike, victim) = (
                proj.clone(),
                evil.clone(),
                lock.clone(),
                look_alike.clone(),
                out.victim.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _turn = gate.lock().unwrap_or_else(|p| p.into_inner());
                    if which == Racer::Component {
                        for _ in 0..64 {
                            if exchange(&proj, &evil) {
                                swaps.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        continue;
                    }
                    for name in ["owner", ".progress", "progress"] {
                        let _ = std::os::unix::fs::symlink(&victim, lock.join(name));
                        let _ = std::os::unix::fs::symlink(&victim, look_alike.join(name));
                    }
                    if exchange(&lock, &look_alike) {
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    for round in 0..rounds {
        // A fresh start each round: the share component a real directory,
        // its stand-in a symlink out; every other round a data directory
        // to migrate, else none (the share target and dirs are only made).
        let baked = round % 2 == 1;
        let layout = gate.lock().unwrap();
        let _ = fs::remove_dir_all(&evil);
        let _ = fs::remove_file(&evil);
        let _ = fs::remove_dir_all(&proj);
        let _ = fs::remove_file(&proj);
        let _ = fs::remove_file(sb.app.join("data"));
        let _ = fs::remove_dir_all(sb.app.join("data"));
        if baked {
            fs::create_dir_all(sb.app.join("data")).unwrap();
            fs::write(sb.app.join("data/f"), format!("round {round}")).unwrap();
        }
        fs::create_dir_all(&proj).unwrap();
        std::os::unix::fs::symlink(&out.target, &evil).unwrap();
        fs::create_dir_all(&look_alike).unwrap();
        drop(layout);
        let o = sb.run(["link"]);
        let _look = gate.lock().unwrap();
        out.untouched(&stderr(&o));
        *codes.entry(code(&o.status)).or_insert(0) += 1;
        if !baked {
            continue;
        }
        // Whatever happened, round's data is somewhere in the share or
        // still in the app directory.
        let kept = fs::read_to_string(sb.app.join("data/f")).ok();
        let mut found = kept.as_deref() == Some(format!("round {round}").as_str());
        for base in [&proj, &evil] {
            if let Ok(s) = fs::read_to_string(base.join("data/f")) {
                found |= s == format!("round {round}");
            }
        }
        walk_names(&sb.share.join(".sharelink/displaced"), &mut |p, _| {
            if fs::read_to_string(p).is_ok_and(|s| s == format!("round {round}")) {
                found = true;
            }
        });
        assert!(
            found,
            "round {round}: the data file is nowhere:\n{}",
            stderr(&o)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for r in racers {
        r.join().unwrap();
    }
    let swaps = swaps.load(Ordering::Relaxed);
    report(&format!(
        "share attacks ({racer:?} racer): {rounds} link runs as root, {swaps} swaps; exit codes {codes:?}; nothing outside the share touched"
    ));
    assert!(
        swaps > rounds as u64,
        "the racers barely ran: {swaps} swaps"
    );
}

/// A holder stopped while it moves merged entries into the target, whose
/// lock is taken over meanwhile (its lease ran out, another replica took
/// it), must not go on renaming into the target once it resumes.
#[test]
fn a_holder_that_lost_its_lock_moves_nothing_more_into_the_target() {
    need_failpoints();
    let sb = Sandbox::new("\"data\" = { share = \"data\", migrate = \"merge\" }");
    let data = sb.app.join("data");
    for i in 0..20 {
        fs::create_dir_all(data.join(format!("d{i}"))).unwrap();
        fs::write(data.join(format!("d{i}/f")), format!("entry {i}")).unwrap();
    }
    fs::create_dir_all(sb.share.join("data")).unwrap();
    fs::write(sb.share.join("data/already"), "the share's own").unwrap();
    let child = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", "merge.moved:1:stop")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id(), Duration::from_secs(30));
    // Another replica takes the lock over: the holder's lock directory is
    // gone, a live one of another host stands in its place.
    let lock = sb.share.join(".sharelink/locks/data");
    fs::rename(&lock, sb.share.join(".sharelink/locks/taken-over")).unwrap();
    fs::create_dir(&lock).unwrap();
    fs::write(
        lock.join("owner"),
        "host=other-replica\nboot=b\npidns=p\npid=1\nstart=1\n",
    )
    .unwrap();
    // Frozen past the three seconds within which the lock must have been
    // confirmed for anything new to be made on the share.
    std::thread::sleep(Duration::from_millis(3500));
    sh(&format!("kill -CONT {}", child.id()));
    let o = child.wait_with_output().unwrap();
    let log = stderr(&o);
    assert_eq!(code(&o.status), 74, "{log}");
    assert!(
        log.contains("taken over") || log.contains("could not be confirmed"),
        "{log}"
    );
    // The moves are spread over workers: those in flight when it stopped
    // may have landed, no more.
    let moved = names(&sb.share.join("data"))
        .into_iter()
        .filter(|n| n.starts_with('d'))
        .count();
    assert!(
        moved <= 4,
        "{moved} entries renamed into the target after losing the lock:\n{log}"
    );
    // Nothing lost: every entry is in the app directory or the share.
    for i in 0..20 {
        let rel = format!("d{i}/f");
        assert!(
            fs::read_to_string(data.join(&rel)).is_ok()
                || fs::read_to_string(sb.share.join("data").join(&rel)).is_ok(),
            "{rel} is nowhere"
        );
    }
}
