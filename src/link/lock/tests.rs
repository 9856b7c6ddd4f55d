//! The lock's unit tests: taking, waiting, staleness, breaking, sweeping.

use super::owner::*;
use super::stale::*;
use super::*;
use crate::fs::meta::Time;
use std::fs;

fn mtime(p: &Path) -> Option<Time> {
    let d = Dir::open(p.parent().unwrap()).unwrap();
    d.stat_at(p.file_name().unwrap())
        .unwrap()
        .map(|m| m.id.mtime)
}

fn locks_dir(root: &Path) -> Dir {
    make_locks(root).unwrap()
}

/// A lock `x` held on a share, and a file outside the share that must
/// stay "precious".
fn held_beside_a_victim() -> (tempfile::TempDir, PathBuf, PathBuf, Lock) {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let share = t.path().join("share");
    fs::create_dir(&share).unwrap();
    let lock = Lock::acquire(&share, Path::new("x")).unwrap();
    (t, victim, share, lock)
}

#[test]
fn ids_are_single_components() {
    assert_eq!(lock_id(Path::new("forecasting/data")), "forecasting%2Fdata");
    assert_eq!(lock_id(Path::new("a b")), "a%20b");
    let long = "x/".repeat(200);
    let id = lock_id(Path::new(&long));
    assert!(id.len() <= 200 && !id.contains('/'));
}

#[test]
fn own_start_time_is_readable() {
    let a = start_time(std::process::id()).unwrap();
    assert!(a.parse::<u64>().is_ok(), "{a}");
}

#[test]
fn who_keeps_only_host_and_pid() {
    assert_eq!(
        who("host=a\nboot=b\nsecret=root:$6$x\npid=7\n"),
        "host=a pid=7"
    );
    assert_eq!(who("root:$6$hash:19000:0:99999:7:::\n"), "host=? pid=?");
    assert_eq!(who("host=a b\u{7}c\n").len(), "host=abc pid=?".len());
}

#[test]
fn lock_excludes_and_releases() {
    let t = tempfile::tempdir().unwrap();
    let a = Lock::acquire(t.path(), Path::new("x")).unwrap();
    let dir = t.path().join(".sharelink/locks/x");
    assert!(dir.join("owner").exists());
    // Same host, live owner: not stale.
    let holder = fs::read_to_string(dir.join("owner")).unwrap();
    let me = identity();
    let m = mtime(&dir.join("owner"));
    assert!(!is_stale(&holder, m, &me, DEFAULT_LEASE));
    // A dead pid on this host: stale.
    let dead = holder.replace(&format!("pid={}", std::process::id()), "pid=999999999");
    assert!(is_stale(&dead, m, &me, DEFAULT_LEASE));
    // Another host with a fresh lease: live.
    assert!(!is_stale("host=elsewhere\n", m, &me, DEFAULT_LEASE));
    drop(a);
    assert!(!dir.exists());
}

/// The lock is the directory sharelink made, not a name with a copy of
/// its owner file: swapped for a look-alike, it is lost, and nothing is
/// written through what the look-alike holds.
#[test]
fn a_look_alike_lock_directory_is_not_ours() {
    let (_t, victim, share, lock) = held_beside_a_victim();
    let dir = share.join(".sharelink/locks/x");
    let fake = share.join(".sharelink/locks/fake");
    fs::create_dir(&fake).unwrap();
    fs::copy(dir.join("owner"), fake.join("owner")).unwrap();
    std::os::unix::fs::symlink(&victim, fake.join(".progress")).unwrap();
    std::os::unix::fs::symlink(&victim, fake.join("progress")).unwrap();
    fs::rename(&dir, share.join("moved")).unwrap();
    fs::rename(&fake, &dir).unwrap();
    assert!(lock.verify().is_err(), "a copy of the owner file passed");
    lock.publish("files=600");
    drop(lock);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(dir.join("owner").exists(), "released someone else's lock");
}

/// A `.progress` or `progress` symlink planted in the live lock is
/// replaced, never written through.
#[test]
fn progress_is_never_written_through_a_planted_symlink() {
    let (_t, victim, share, lock) = held_beside_a_victim();
    let dir = share.join(".sharelink/locks/x");
    std::os::unix::fs::symlink(&victim, dir.join(".progress")).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("progress")).unwrap();
    lock.publish("files=600 files_total=600");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(
        fs::read_to_string(dir.join("progress")).unwrap(),
        "files=600 files_total=600"
    );
    assert!(!dir.join("progress").is_symlink());
    drop(lock);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
}

/// An owner file that is a symlink (to a root-only file) is never read:
/// the lock counts as ownerless and is cleared, the symlink itself
/// removed, its target untouched and never logged.
#[test]
fn a_planted_owner_symlink_is_not_read() {
    let t = tempfile::tempdir().unwrap();
    let secret = t.path().join("secret");
    fs::write(&secret, "host=root:$6$secret-hash\npid=1\n").unwrap();
    let share = t.path().join("share");
    let dir = share.join(".sharelink/locks/x");
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("owner")).unwrap();
    assert!(holder(&share, Path::new("x")).is_none());
    let l = Lock::acquire(&share, Path::new("x")).unwrap();
    l.verify().unwrap();
    assert!(
        fs::read_link(dir.join("owner")).is_err(),
        "owner is still the symlink"
    );
    drop(l);
    assert!(secret.exists());
}

#[test]
fn private_names_differ_across_hosts_and_abandoned_ones_are_swept() {
    let me = identity();
    // Two containers, each sharelink PID 1 with the same start time.
    let a = fresh_name("x", "host=a\nboot=b\npidns=1\n", 1, "5");
    let b = fresh_name("x", "host=c\nboot=b\npidns=1\n", 1, "5");
    assert_ne!(a, b);
    let t = tempfile::tempdir().unwrap();
    let locks_path = t.path().join(".sharelink/locks");
    let locks = locks_dir(t.path());
    // This host, maker dead before it wrote the owner file: swept.
    let dead = locks_path.join(fresh_name("x", &me, 999_999_999, "1"));
    fs::create_dir(&dead).unwrap();
    // Another host, fresh: may be mid-acquire, kept.
    let other = locks_path.join(b);
    fs::create_dir(&other).unwrap();
    // This host, alive: kept.
    let pid = std::process::id();
    let live = locks_path.join(fresh_name("x", &me, pid, &start_time(pid).unwrap()));
    fs::create_dir(&live).unwrap();
    sweep_abandoned(&locks, "x", &me, "none", DEFAULT_LEASE);
    assert!(!dead.exists());
    assert!(other.exists() && live.exists());
    // The other host's, once its lease has run out: swept.
    std::thread::sleep(Duration::from_millis(20));
    sweep_abandoned(&locks, "x", &me, "none", Duration::from_nanos(1));
    assert!(!other.exists());
}

/// Waiting longer than the lease for a live holder on another host:
/// the waiter's private directory must not be swept as abandoned by a
/// third host meanwhile, and the lock it then takes must not look stale
/// to that third host (which would break it: two holders).
#[test]
fn a_lock_taken_after_a_long_wait_keeps_its_lease() {
    let lease = Duration::from_millis(1000);
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let locks_path = root.join(".sharelink/locks");
    let dir = locks_path.join("x");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("owner"),
        "host=elsewhere\nboot=b\npidns=p\npid=1\nstart=1\n",
    )
    .unwrap();
    // The live holder keeps its lease for two leases, then releases.
    let holder_dir = dir.clone();
    let holder = std::thread::spawn(move || {
        let until = Instant::now() + lease * 2;
        let d = Dir::open(&holder_dir).unwrap();
        while Instant::now() < until {
            d.touch_at(OsStr::new("owner")).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        fs::remove_file(holder_dir.join("owner")).unwrap();
        fs::remove_dir(&holder_dir).unwrap();
    });
    let waiter_root = root.clone();
    let waiter =
        std::thread::spawn(move || Lock::acquire_with_lease(&waiter_root, Path::new("x"), lease));
    let third = "host=third\nboot=b\npidns=p\n";
    std::thread::sleep(lease * 3 / 2);
    sweep_abandoned(&locks_dir(&root), "x", third, "none", lease);
    let private: Vec<_> = fs::read_dir(&locks_path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("x.new."))
        .collect();
    assert_eq!(private.len(), 1, "the waiter's private directory was swept");
    holder.join().unwrap();
    let lock = waiter.join().unwrap().expect("the waiter takes the lock");
    assert!(
        !lock.taken_at_once(),
        "it waited: the link is looked at again"
    );
    let owner = fs::read_to_string(dir.join("owner")).unwrap();
    assert!(
        !is_stale(&owner, mtime(&dir.join("owner")), third, lease),
        "a lock just taken looks stale to another host"
    );
    drop(lock);
    assert!(!dir.exists());
}

#[test]
fn stale_lock_is_broken() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join(".sharelink/locks/x");
    fs::create_dir_all(&dir).unwrap();
    let me = identity();
    fs::write(dir.join("owner"), record(&me, 999_999_999, "1")).unwrap();
    let l = Lock::acquire(t.path(), Path::new("x")).unwrap();
    l.verify().unwrap();
    assert!(!l.taken_at_once(), "a broken lock is no free one");
}

#[test]
fn a_free_lock_is_taken_at_once() {
    let (_t, _victim, _share, lock) = held_beside_a_victim();
    assert!(lock.taken_at_once());
}
