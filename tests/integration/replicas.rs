//! Concurrent replicas and dead lock holders.
//!
//! Several replicas starting at once on the same share must all end
//! linked, with the baked data migrated exactly once and nothing lost.
//! Two ways, 50 rounds each, 8 processes per round:
//! - one app root shared by all 8 (people running `sharelink link` by hand
//!   in a running container);
//! - 8 app roots (one overlay each over the same image layer) and one
//!   share, each replica PID 1 of its own PID namespace with its own host
//!   name, like containers on several machines. Nothing here uses `flock`.
//!
//! And: a lock whose holder died (SIGKILL while holding it) is broken; a
//! lock whose holder is alive is not; a foreign host's lock is broken once
//! its lease expires.

use crate::support::{self, DefaultSignals};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use support::Tree;

const ROUNDS: usize = 50;
const REPLICAS: usize = 8;

struct Round {
    share: PathBuf,
    app_roots: Vec<PathBuf>,
    configs: Vec<PathBuf>,
}

/// A fresh tmpfs share and `n_apps` overlays over `lower` under `dir`.
fn fresh_round(dir: &Path, lower: &Path, n_apps: usize) -> Round {
    if dir.exists() {
        for e in fs::read_dir(dir).unwrap().flatten() {
            support::umount_lazy(&e.path().join("merged"));
        }
        support::umount_lazy(&dir.join("share"));
        fs::remove_dir_all(dir).unwrap();
    }
    fs::create_dir_all(dir).unwrap();
    let share = dir.join("share");
    support::mount_tmpfs(&share, "128m");
    let mut app_roots = Vec::new();
    let mut configs = Vec::new();
    for i in 0..n_apps {
        let app_root = support::mount_overlay(&dir.join(format!("app{i}")), lower);
        let cfg = dir.join(format!("sharelink{i}.toml"));
        fs::write(
            &cfg,
            support::config_text(
                &app_root,
                &share,
                true,
                "",
                "\"data\" = { share = \"data\", dirs = [\"in\", \"out\"] }\n\"cache\" = { share = \"c/cache\", migrate = \"merge\" }",
            ),
        )
        .unwrap();
        app_roots.push(app_root);
        configs.push(cfg);
    }
    Round {
        share,
        app_roots,
        configs,
    }
}

fn image_layer(base: &Path) -> (PathBuf, Tree, Tree) {
    let lower = base.join("lower");
    support::make_tree(&lower.join("data"), 250, 64 * 1024, 0xbeef);
    support::make_tree(&lower.join("cache"), 40, 4096, 0xcafe);
    let data = support::snapshot(&lower.join("data"));
    let cache = support::snapshot(&lower.join("cache"));
    (lower, data, cache)
}

/// Everything a round must end with. Returns failures.
fn check_round(r: &Round, data: &Tree, cache: &Tree) -> Vec<String> {
    let mut bad = Vec::new();
    let mut want_data = data.clone();
    for d in ["in", "out"] {
        want_data.insert(d.into(), support::Node::Dir);
    }
    for (name, share_rel, want) in [("data", "data", &want_data), ("cache", "c/cache", cache)] {
        let got = support::snapshot(&r.share.join(share_rel));
        let (missing, corrupt, extra, msgs) = support::diff(want, &got, true, 5);
        if missing + corrupt + extra > 0 {
            bad.push(format!(
                "{name}: {missing} missing, {corrupt} differ, {extra} unexpected (nesting or duplicates): {msgs:?}"
            ));
        }
        for app_root in &r.app_roots {
            let link = app_root.join(name);
            if fs::read_link(&link).ok() != Some(r.share.join(share_rel)) {
                bad.push(format!("{} is not linked", link.display()));
            }
        }
    }
    if r.share.join(".sharelink/displaced").exists() {
        let mut d = Vec::new();
        support::walk_names(&r.share.join(".sharelink/displaced"), &mut |p, _| {
            d.push(p.display().to_string())
        });
        bad.push(format!("data was displaced (migrated twice?): {d:?}"));
    }
    for app_root in &r.app_roots {
        let left = support::leftovers(app_root, &r.share);
        if !left.is_empty() {
            bad.push(format!("left behind: {left:?}"));
            break;
        }
    }
    bad
}

fn wait_all(children: Vec<(usize, Child, PathBuf)>) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, mut c, log) in children {
        let s = support::wait_with_limit(&mut c, Duration::from_secs(120), "replica");
        if !s.success() {
            bad.push(format!(
                "replica {i} exited {}: {}",
                support::code(&s),
                fs::read_to_string(&log).unwrap_or_default()
            ));
        }
    }
    bad
}

/// `ROUNDS` rounds: a fresh share and app roots (`app_roots` of them), then
/// `REPLICAS` processes from `spawn(i, round, log)` at once; every round is
/// checked. Reports the summary line and panics with it on any failure.
fn replica_rounds(
    tmp: &Path,
    app_roots: usize,
    what: &str,
    spawn: impl Fn(usize, &Round, fs::File) -> Child,
) {
    support::mount_tmpfs(tmp, "2g");
    let (lower, data, cache) = image_layer(tmp);
    let t0 = Instant::now();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let r = fresh_round(&tmp.join("round"), &lower, app_roots);
        let children: Vec<_> = (0..REPLICAS)
            .map(|i| {
                let log = tmp.join(format!("round/r{i}.log"));
                let c = spawn(i, &r, fs::File::create(&log).unwrap());
                (i, c, log)
            })
            .collect();
        let mut bad = wait_all(children);
        bad.extend(check_round(&r, &data, &cache));
        if !bad.is_empty() {
            failures.push(format!("round {round}: {}", bad.join("\n  ")));
        }
    }
    let summary = format!(
        "replicas, {what}: {ROUNDS} rounds x {REPLICAS} (2 links, {} entries), failed rounds {}, in {:?}",
        data.len() + cache.len(),
        failures.len(),
        t0.elapsed()
    );
    support::report(&summary);
    assert!(failures.is_empty(), "{summary}\n{}", failures.join("\n"));
}

#[test]
fn replicas_on_one_app_root() {
    if !in_private_mount_ns!("replicas_on_one_app_root") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    replica_rounds(
        tmp.path(),
        1,
        "one app root (concurrent `sharelink link` by hand)",
        |_, r, log| {
            support::sharelink(&r.configs[0])
                .arg("link")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        },
    );
}

#[test]
fn replicas_on_separate_machines() {
    if !in_private_mount_ns!("replicas_on_separate_machines") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    replica_rounds(
        tmp.path(),
        REPLICAS,
        "separate machines (own app root, own PID namespace as PID 1, own host name; one share)",
        |i, r, log| {
            // PID 1 of its own PID namespace with its own host name: a
            // container on another machine, as far as sharelink can tell.
            std::process::Command::new("unshare")
                .default_signals()
                .args(["--pid", "--fork", "--mount-proc", "--uts", "sh", "-c"])
                .arg(format!(
                    "hostname replica-{i} && exec \"$0\" --config \"$1\" link"
                ))
                .arg(support::bin())
                .arg(&r.configs[i])
                .env_remove("SHARELINK_LOG")
                .env_remove("SHARELINK_LOCK_LEASE")
                .env_remove("SHARELINK_FAILPOINT")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        },
    );
}
#[test]
fn lock_of_a_killed_holder_is_broken() {
    if !support::api::FAILPOINTS_ENABLED {
        panic!("build with --features failpoints (the documented test command)");
    }
    let sb = support::Sandbox::new("\"data\" = \"data\"");
    let (app, share, cfg) = (sb.app.clone(), sb.share.clone(), sb.config.clone());
    support::make_tree(&app.join("data"), 200, 20_000, 3);
    let before = support::snapshot(&app.join("data"));
    let mut killed_at = Vec::new();
    // Die holding the lock at each point where a holder can die.
    for point in [
        "lock.acquired",
        "staging.file:50",
        "staging.synced",
        "prune.entry:10",
        "swap.temp",
    ] {
        let o = support::sharelink(&cfg)
            .arg("link")
            .env("SHARELINK_FAILPOINT", point)
            .output()
            .unwrap();
        if support::code(&o.status) != 137 {
            // Already past that point (an earlier kill moved the state on).
            continue;
        }
        killed_at.push(point);
        if point != "swap.temp" {
            assert!(
                share.join(".sharelink/locks/data/owner").exists(),
                "{point}: the dead holder's lock should still be there"
            );
        }
    }
    assert!(killed_at.len() >= 3, "{killed_at:?}");
    let o = support::sharelink(&cfg).arg("link").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(support::snapshot(&share.join("data")), before);
    assert_eq!(fs::read_link(app.join("data")).unwrap(), share.join("data"));
    assert_eq!(support::leftovers(&app, &share), Vec::<String>::new());
    drop(sb);
}

#[test]
fn lock_of_a_live_holder_is_respected_and_a_foreign_expired_one_broken() {
    let sb = support::Sandbox::new("\"data\" = \"data\"");
    let (app, share, cfg) = (sb.app.clone(), sb.share.clone(), sb.config.clone());
    support::make_tree(&app.join("data"), 50, 1000, 4);
    let before = support::snapshot(&app.join("data"));
    let lock = share.join(".sharelink/locks/data");
    fs::create_dir_all(&lock).unwrap();

    // A live process of this host holds it: sharelink waits, touches nothing.
    let mut holder = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let owner = support::api::owner_file_of(holder.id());
    fs::write(lock.join("owner"), &owner).unwrap();
    let mut waiter = support::sharelink(&cfg)
        .arg("link")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "did not wait for a live lock holder"
    );
    assert_eq!(fs::read_to_string(lock.join("owner")).unwrap(), owner);
    assert_eq!(support::snapshot(&app.join("data")), before);
    assert!(!share.join("data").exists());
    // The holder dies without releasing: the waiter breaks the lock.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let s = support::wait_with_limit(&mut waiter, Duration::from_secs(30), "waiter");
    assert!(s.success());
    assert_eq!(support::snapshot(&share.join("data")), before);

    // A holder on another machine whose lease ran out (owner file not
    // refreshed for longer than SHARELINK_LOCK_LEASE) is broken too.
    let sb2 = support::Sandbox::new("\"data\" = \"data\"");
    let (app2, share2, cfg2) = (sb2.app.clone(), sb2.share.clone(), sb2.config.clone());
    support::make_tree(&app2.join("data"), 50, 1000, 5);
    let lock2 = share2.join(".sharelink/locks/data");
    fs::create_dir_all(&lock2).unwrap();
    fs::write(
        lock2.join("owner"),
        "host=elsewhere\nboot=x\npidns=y\npid=1\nstart=1\n",
    )
    .unwrap();
    let old = SystemTime::now() - Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(lock2.join("owner"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let o = support::sharelink(&cfg2)
        .arg("link")
        .env("SHARELINK_LOCK_LEASE", "2s")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stale lock"));
    assert_eq!(support::leftovers(&app2, &share2), Vec::<String>::new());
}

/// Two services whose images use the same app path (`/app/data`) for
/// different share paths (two pipelines, or a rolling update that moved
/// the share path). Each one's set-aside copies are its own: the second
/// service, finishing while the first is stopped in the middle of setting
/// its files aside, must not clear the first one's copy in progress.
#[test]
#[cfg(feature = "failpoints")]
fn services_with_one_app_path_keep_each_others_set_aside_copies() {
    use support::{expect_code, make_tree, sharelink, snapshot, stderr, wait_stopped, Sandbox};
    let sb = Sandbox::new("\"data\" = \"svc1/data\"");
    make_tree(&sb.app.join("data"), 300, 2000, 41);
    let baked = snapshot(&sb.app.join("data"));
    // svc1's share target holds data already: in `if-empty` mode every
    // baked file is set aside.
    fs::create_dir_all(sb.share.join("svc1/data")).unwrap();
    fs::write(sb.share.join("svc1/data/existing"), "svc1's share data").unwrap();
    let app2 = sb.path("app2");
    fs::create_dir_all(app2.join("data")).unwrap();
    fs::write(app2.join("data/only"), "svc2 baked").unwrap();
    let config2 = sb.path("svc2.toml");
    fs::write(
        &config2,
        support::config_text(&app2, &sb.share, false, "", "\"data\" = \"svc2/data\""),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let svc1 = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", "staging.synced:1:stop")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(svc1.id(), Duration::from_secs(60));
    let o = sharelink(&config2).arg("link").output().unwrap();
    expect_code(&o, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(svc1.id() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let o = svc1.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "svc1: {}", stderr(&o));
    let copies = support::displaced(&sb.share, "svc1/data");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(snapshot(&copies[0]), baked, "svc1's set-aside copy");
    assert_eq!(
        fs::read_to_string(sb.share.join("svc2/data/only")).unwrap(),
        "svc2 baked"
    );
    assert!(support::leftovers(&sb.app, &sb.share).is_empty());
}
