//! The share misbehaving: not mounted (or mounted late), read-only, too
//! small, filling up mid-migration, and SMB-like (refusing chmod and
//! chown). Each reports a figure for docs/reliability.md.

use crate::support::latencyfs::LatencyFs;
use crate::support::*;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// An image layer on tmpfs and an overlay app root over it.
fn baked(base: &Path, files: usize, big: usize) -> (PathBuf, Tree) {
    mount_tmpfs(base, "1g");
    let lower = base.join("lower");
    make_tree(&lower.join("data"), files, big, 11);
    let tree = snapshot(&lower.join("data"));
    let app_root = mount_overlay(&base.join("ovl"), &lower);
    (app_root, tree)
}

fn write_cfg(base: &Path, app_root: &Path, share: &Path, extra: &str, links: &str) -> PathBuf {
    let cfg = base.join("sharelink.toml");
    fs::write(&cfg, config_text(app_root, share, true, extra, links)).unwrap();
    cfg
}

#[test]
fn unmounted_share_with_require_mount_exits_69_touching_nothing() {
    // A baked directory to migrate, and a link whose app parent is missing.
    let links = "\"data\" = { share = \"data\", dirs = [\"in\"] }\n\"made/new\" = \"new\"";
    let sb = Sandbox::new(links);
    sb.write_config(true, links);
    make_tree(&sb.app.join("data"), 30, 1000, 1);
    let app_before = snapshot(&sb.app);
    let app_stamp = stamp(&sb.app);
    let share_stamp = stamp(&sb.share);
    for args in [&["link"][..], &["link", "--dry-run"][..]] {
        let o = sb.run(args);
        expect_code(&o, 69);
        assert!(stderr(&o).contains("not a mount point"), "{}", stderr(&o));
    }
    assert_eq!(snapshot(&sb.app), app_before);
    assert!(snapshot(&sb.share).is_empty());
    assert_eq!(stamp(&sb.app), app_stamp);
    assert_eq!(stamp(&sb.share), share_stamp);
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("share-unavailable"), "{}", stdout(&o));
    // A missing share_root is unavailable too, whatever require_mount says.
    fs::remove_dir(&sb.share).unwrap();
    expect_code(&sb.run(["link"]), 69);
    expect_code(&sb.run(["--require-mount", "false", "link"]), 69);
    assert!(!sb.share.exists());
    assert_eq!(snapshot(&sb.app), app_before);
    // With require_mount = false, a plain directory is a fine share.
    fs::create_dir(&sb.share).unwrap();
    let o = sb.run(["--require-mount", "false", "link"]);
    expect_code(&o, 0);
    assert_eq!(without_dirs(snapshot(&sb.share.join("data")), &["in"]), {
        // `make_tree` data, now on the share.
        app_before
            .iter()
            .filter_map(|(p, n)| Some((p.strip_prefix("data").ok()?.to_path_buf(), n.clone())))
            .filter(|(p, _)| !p.as_os_str().is_empty())
            .collect()
    });
    assert_eq!(
        fs::read_link(sb.app.join("made/new")).unwrap(),
        sb.share.join("new")
    );
    report("unmounted share: share_root not a mount point, or missing: link and dry-run exit 69, app and share untouched (no directory created), status share-unavailable");
}
/// The device a path lives on (which filesystem holds it).
fn dev(p: &Path) -> u64 {
    lmeta(p).dev()
}

/// One share mounted for several apps: `share_root` a directory below the
/// mount point is accepted (with a note naming the mount); a Docker volume
/// on the local disk where the share belongs is refused (69) unless
/// `allow_local_volume = true`.
#[test]
fn share_root_below_the_mount_and_local_docker_volumes() {
    if !in_private_mount_ns!("share_root_below_the_mount_and_local_docker_volumes") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    make_tree(&sb.app.join("data"), 5, 100, 3);
    // A bind mount stands for the share (its own line in mountinfo, not
    // the root filesystem); share_root is one app's directory on it.
    let backing = sb.path("backing");
    fs::create_dir_all(backing.join("etl-prod")).unwrap();
    let mnt = sb.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "mount --bind '{}' '{}'",
        backing.display(),
        mnt.display()
    ));
    let cfg = |share: &Path, extra: &str| {
        fs::write(
            &sb.config,
            config_text(&sb.app, share, true, extra, "\"data\" = \"data\""),
        )
        .unwrap();
    };
    let below = mnt.join("etl-prod");
    cfg(&below, "");
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("not a mount point itself")
            && err.contains(&format!("mounted at {}", mnt.display())),
        "{err}"
    );
    assert_eq!(
        fs::read_link(sb.app.join("data")).unwrap(),
        below.join("data")
    );
    // A new app's directory on the share: `status` says `link` makes it;
    // `link` does, and links into it.
    let fresh = mnt.join("etl-new");
    cfg(&fresh, "");
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("share-unavailable"), "{}", stdout(&o));
    assert!(!fresh.exists());
    fs::remove_file(sb.app.join("data")).unwrap();
    fs::create_dir(sb.app.join("data")).unwrap();
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("created share_root"), "{}", stderr(&o));
    assert_eq!(
        fs::read_link(sb.app.join("data")).unwrap(),
        fresh.join("data")
    );
    // A directory next to the mount, on the root filesystem: refused, and
    // the message says how to mount, not only how to turn the check off.
    let plain = sb.path("plain");
    fs::create_dir_all(plain.join("etl-prod")).unwrap();
    cfg(&plain.join("etl-prod"), "");
    let o = sb.run(["link"]);
    expect_code(&o, 69);
    assert!(stderr(&o).contains("volumeMount"), "{}", stderr(&o));
    // ... and one missing there is not made.
    cfg(&plain.join("etl-other"), "");
    expect_code(&sb.run(["link"]), 69);
    assert!(!plain.join("etl-other").exists());

    // What an image's VOLUME with no -v gives: a bind of
    // .../volumes/<64 hex>/_data from the engine's disk.
    let hex = "65fa3bf473d581f6c4fd5366b0b18b6a200deee157e7d092ad949020b9426dae";
    let data = sb.path(&format!("docker/volumes/{hex}/_data"));
    fs::create_dir_all(&data).unwrap();
    let vol = sb.path("fileshare");
    fs::create_dir_all(&vol).unwrap();
    sh(&format!(
        "mount --bind '{}' '{}'",
        data.display(),
        vol.display()
    ));
    let before = snapshot(&sb.app);
    cfg(&vol, "");
    for args in [&["link"][..], &["link", "--dry-run"][..]] {
        let o = sb.run(args);
        expect_code(&o, 69);
        let err = stderr(&o);
        assert!(
            err.contains("anonymous Docker volume") && err.contains("VOLUME"),
            "{err}"
        );
    }
    assert_eq!(snapshot(&sb.app), before);
    assert!(snapshot(&vol).is_empty());
    cfg(&vol, "allow_local_volume = true");
    expect_code(&sb.run(["link"]), 0);
    assert!(vol.join("data").is_dir());
    umount_lazy(&vol);
    umount_lazy(&mnt);
    report("share_root below the mount point: accepted with a note naming the mount; an anonymous Docker volume (an image's VOLUME without -v) at share_root: link and dry-run exit 69, nothing touched, allow_local_volume = true accepts it");
}

#[test]
fn mount_timeout_waits_for_the_share_and_uses_it() {
    if !in_private_mount_ns!("mount_timeout_waits_for_the_share_and_uses_it") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let links = "\"data\" = { share = \"data\", dirs = [\"in\"] }\n\"made/new\" = \"new\"";
    let sb = Sandbox::new(links);
    make_tree(&sb.app.join("data"), 40, 1000, 61);
    let before = snapshot(&sb.app.join("data"));

    // Too short a wait: 69, nothing touched.
    sb.write_config_with(true, "mount_timeout = \"300ms\"", links);
    let t0 = std::time::Instant::now();
    let o = sb.run(["link"]);
    expect_code(&o, 69);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(snapshot(&sb.app.join("data")), before);
    assert!(!sb.app.join("made").exists());
    assert!(snapshot(&sb.share).is_empty());

    // The mount appears while `link` waits.
    sb.write_config_with(true, "mount_timeout = \"10s\"", links);
    let mut child = sb.cmd().arg("link").stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    // Wait until it says it is waiting (no sleep-as-synchronisation).
    while !log.contains("for the share:") {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "link ended early:\n{log}"
        );
        log.push_str(&line);
    }
    let share = sb.share.clone();
    let mounter = std::thread::spawn(move || {
        // The share shows up a moment later, as a slow SMB mount would.
        std::thread::sleep(std::time::Duration::from_millis(1000));
        mount_tmpfs(&share, "64m");
    });
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    log.push_str(&rest);
    let status = child.wait().unwrap();
    mounter.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    // The data landed in the tmpfs mounted later, not in the directory under it.
    assert_ne!(dev(&sb.share), dev(sb.root.path()));
    assert_eq!(dev(&sb.share.join("data")), dev(&sb.share));
    assert_eq!(
        without_dirs(snapshot(&sb.share.join("data")), &["in"]),
        before
    );
    assert_eq!(
        fs::read_link(sb.app.join("made/new")).unwrap(),
        sb.share.join("new")
    );
    umount(&sb.share);
    assert!(
        snapshot(&sb.share).is_empty(),
        "wrote under the mount point"
    );
    report("late mount: mount_timeout 300ms and no mount: exit 69 after the wait, nothing touched; a mount appearing 1 s into a 10 s mount_timeout: used, exit 0, data equal on it, nothing written under the mount point");
}

#[test]
fn read_only_share_exits_73_and_touches_nothing() {
    if !in_private_mount_ns!("read_only_share_exits_73_and_touches_nothing") {
        return;
    }
    let links = "\"baked\" = \"baked\"";
    let sb = Sandbox::new(links);
    let backing = sb.root.path().join("backing");
    mount_tmpfs(&backing, "64m");
    make_tree(&sb.app.join("baked"), 40, 5000, 41);
    mount_ro_bind(&backing, &sb.share);
    for (links, what) in [
        ("\"baked\" = \"baked\"", "baked dir to migrate"),
        (
            "\"missing\" = { share = \"m\", dirs = [\"in\"] }",
            "target to create",
        ),
        ("\"baked\" = \"baked\"\n\"missing\" = \"m\"", "both"),
    ] {
        sb.write_config(true, links);
        let (app_before, share_before) = (snapshot(&sb.app), snapshot(&backing));
        let o = sb.run(["link"]);
        assert_eq!(code(&o), 73, "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains("Read-only"), "{what}: {}", stderr(&o));
        assert_eq!(snapshot(&sb.app), app_before, "{what}");
        assert_eq!(snapshot(&backing), share_before, "{what}");
    }
    // Linked earlier on a writable share, a re-run on a read-only one has
    // nothing to write and succeeds.
    umount(&sb.share);
    sb.write_config(true, "\"baked\" = \"baked\"\n\"missing\" = \"m\"");
    mount_ro_bind(&backing, &sb.share);
    sh(&format!(
        "mount -o remount,bind,rw '{}'",
        sb.share.display()
    ));
    expect_code(&sb.run(["link"]), 0);
    sh(&format!(
        "mount -o remount,bind,ro '{}'",
        sb.share.display()
    ));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    expect_code(&sb.run(["status"]), 0);
    // With sharelink's own state directory already there, a new baked
    // directory (and a new link whose app parent is missing) still fails
    // cleanly: the lock cannot be taken.
    assert!(backing.join(".sharelink/locks").is_dir());
    sb.write_config(
        true,
        "\"late\" = \"late\"\n\"fresh/new\" = { share = \"new\", dirs = [\"in\"] }",
    );
    make_tree(&sb.app.join("late"), 10, 100, 42);
    let (app_before, share_before) = (snapshot(&sb.app), snapshot(&backing));
    let o = sb.run(["link"]);
    expect_code(&o, 73);
    assert!(stderr(&o).contains("Read-only"), "{}", stderr(&o));
    assert_eq!(snapshot(&sb.app), app_before);
    assert_eq!(snapshot(&backing), share_before);
    report("read-only share: a baked directory to migrate, a target to create, both, and both on a share used before: exit 73, share and app byte-for-byte unchanged; already linked on a share since made read-only: exit 0, status healthy");
}
#[test]
fn share_too_small_exits_73_before_copying_and_completes_once_grown() {
    if !in_private_mount_ns!("share_too_small_exits_73_before_copying_and_completes_once_grown") {
        return;
    }
    let sb = Sandbox::new("\"data\" = { share = \"data\", dirs = [\"in\"] }");
    let baked = sb.app.join("data");
    make_tree(&baked, 60, 1000, 51);
    for i in 0..3 {
        fs::write(baked.join(format!("big{i}")), vec![i as u8 + 1; 1 << 20]).unwrap();
    }
    let before = snapshot(&baked);
    mount_tmpfs(&sb.share, "1m");
    sb.write_config(true, "\"data\" = { share = \"data\", dirs = [\"in\"] }");
    let o = sb.run(["link"]);
    expect_code(&o, 73);
    let err = stderr(&o);
    assert!(
        err.contains("free") && err.contains("Nothing was copied") && err.contains("data"),
        "{err}"
    );
    assert_eq!(snapshot(&baked), before, "original must be intact");
    assert!(lmeta(&baked).is_dir());
    // Refused before copying: no target, no staging.
    assert!(!sb.share.join("data").exists());
    assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    // Room again: the next run finishes the job.
    sh(&format!(
        "mount -o remount,size=64m '{}'",
        sb.share.display()
    ));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(
        without_dirs(snapshot(&sb.share.join("data")), &["in"]),
        before
    );
    assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
    assert_eq!(fs::read_link(&baked).unwrap(), sb.share.join("data"));
    expect_code(&sb.run(["status"]), 0);
}

#[test]
fn full_share_mid_migration_then_space_freed() {
    if !in_private_mount_ns!("full_share_mid_migration_then_space_freed") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (app_root, tree) = baked(tmp.path(), 200, 1 << 20);
    let bytes: usize = tree
        .values()
        .map(|e| match e {
            Node::File { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum();
    let share = tmp.path().join("share");
    mount_tmpfs(&share, "256m");
    let cfg = write_cfg(tmp.path(), &app_root, &share, "", "\"data\" = \"data\"");
    // The share has room when the copy starts; something else fills it
    // while sharelink is a third of the way through (it is stopped at that
    // point, the share filled, then it goes on).
    let child = sharelink(&cfg)
        .arg("link")
        .env("SHARELINK_PARALLELISM", "1")
        .env(
            "SHARELINK_FAILPOINT",
            format!("staging.file:{}:stop", tree.len() / 6),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    wait_stopped(child.id(), Duration::from_secs(60));
    sh(&format!(
        "dd if=/dev/zero of='{}/filler' bs=1M 2>/dev/null; true",
        share.display()
    ));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let o = child.wait_with_output().unwrap();
    expect_code(&o, 73);
    assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
    // Original intact, nothing half-copied visible at the target.
    assert_eq!(snapshot(&app_root.join("data")), tree);
    assert!(!share.join("data").exists());
    // The partial copy is gone: a failed run does not leave the share full
    // for everyone else.
    fs::remove_file(share.join("filler")).unwrap();
    assert_eq!(leftovers(&app_root, &share), Vec::<String>::new());
    // Space freed: the rerun completes.
    let o = sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert_eq!(snapshot(&share.join("data")), tree);
    assert_eq!(
        fs::read_link(app_root.join("data")).unwrap(),
        share.join("data")
    );
    assert_eq!(leftovers(&app_root, &share), Vec::<String>::new());
    report(&format!(
        "full share: migration of {} entries ({bytes} bytes) into a share that another writer fills a sixth of the way through: exit 73, original intact, target not visible, partial copy removed; after space is freed: exit 0, all {} entries equal",
        tree.len(),
        tree.len()
    ));
}

#[test]
fn share_refusing_chmod_and_chown_warns_once_per_link() {
    if !in_private_mount_ns!("share_refusing_chmod_and_chown_warns_once_per_link") {
        return;
    }
    let links =
        "\"one\" = { share = \"one\", dirs = [\"in\"] }\n\"two\" = \"two\"\n\"three\" = \"three\"";
    let sb = Sandbox::new(links);
    make_tree(&sb.app.join("one"), 80, 20_000, 31);
    // "two": the share already has data, so app-only files are displaced
    // (the displaced copy is refused chmod too).
    make_tree(&sb.app.join("two"), 40, 1000, 32);
    let backing = sb.root.path().join("backing");
    mount_tmpfs(&backing, "64m");
    make_tree(&backing.join("two"), 10, 100, 33);
    // Owned by someone else than sharelink (root), so keeping owners takes
    // a chown, which this share refuses.
    sh(&format!(
        "chown -R 4321:4321 '{}' '{}'",
        sb.app.join("one").display(),
        sb.app.join("two").display()
    ));
    let share_two = snapshot(&backing.join("two"));
    let (one, two) = (snapshot(&sb.app.join("one")), snapshot(&sb.app.join("two")));
    mount_bindfs(&backing, &sb.share, "--chmod-deny --chown-deny");
    let _fuse = Fuse(sb.share.clone());
    // Precondition: this share really refuses chmod.
    fs::write(sb.share.join("probe"), "").unwrap();
    let e = fs::set_permissions(
        sb.share.join("probe"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    fs::remove_file(sb.share.join("probe")).unwrap();

    sb.write_config(true, links);
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    // One warning per migrated link and kind of loss: owners and modes.
    let mut refusals: Vec<(String, String)> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("the share refused"))
        .map(|l| {
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .unwrap_or("")
                    .to_string()
            };
            (field("link"), field("kind"))
        })
        .collect();
    refusals.sort();
    let want: Vec<(String, String)> = [
        ("one", "modes"),
        ("one", "owners"),
        ("two", "modes"),
        ("two", "owners"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(refusals, want, "{err}");
    // No other warning than the one for what of "two" was set aside.
    let others: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("the share refused"))
        .collect();
    assert!(
        others.len() == 1 && others[0].contains("displaced") && others[0].contains("two"),
        "{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(
        without_modes(&without_dirs(snapshot(&sb.share.join("one")), &["in"])),
        without_modes(&one)
    );
    assert_eq!(snapshot(&sb.share.join("two")), share_two);
    let displaced = sb.share.join(".sharelink/displaced/two");
    let stamps: Vec<_> = fs::read_dir(&displaced)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stamps.len(), 1);
    let kept = snapshot(&stamps[0]);
    for (p, n) in without_modes(&two) {
        if !share_two.contains_key(&p) {
            assert_eq!(
                without_modes(&kept).get(&p),
                Some(&n),
                "{} displaced",
                p.display()
            );
        }
    }
    expect_code(&sb.run(["status"]), 0);
    // Nothing left to warn about on the next run.
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
    umount(&sb.share);
    report(&format!(
        "SMB-like share (bindfs --chmod-deny --chown-deny): 2 migrated links ({} entries, one of them into a share with data of its own) + 1 new link: exit 0, content equal (modes not kept), exactly 1 warning per migrated link and kind, rerun silent",
        one.len() + two.len()
    ));
}

/// On SMB a file unlinked while a handle to it is still open keeps its name
/// (delete pending) until the last handle closes, and its directory cannot
/// be removed until then; libfuse without `hard_remove` does the same.
/// sharelink removes what it made (staging directories, the set-aside
/// store's partial copy, the lock) only after closing every file in them,
/// and waits out names that stay a moment after their last close (on FUSE
/// the close the server sees is sent after close(2) returned), so nothing
/// is left behind and no removal fails.
#[test]
fn share_keeping_unlinked_open_files_leaves_nothing_behind() {
    if !in_private_mount_ns!("share_keeping_unlinked_open_files_leaves_nothing_behind") {
        return;
    }
    let links = "\"one\" = \"one\"\n\"two\" = \"two\"\n\"three\" = { share = \"three\", migrate = \"image-wins\" }";
    let sb = Sandbox::new(links);
    make_tree(&sb.app.join("one"), 60, 20_000, 41);
    make_tree(&sb.app.join("two"), 30, 1000, 42);
    make_tree(&sb.app.join("three"), 20, 1000, 43);
    let backing = sb.root.path().join("backing");
    mount_tmpfs(&backing, "64m");
    // "two" and "three": the share has data of its own, so app files are
    // set aside ("two") and share files replaced by the image's, the
    // share's versions kept aside first ("three").
    make_tree(&backing.join("two"), 10, 100, 44);
    sh(&format!(
        "cp -a '{}' '{}' && find '{}' -name 'f*.dat' | head -8 | while read f; do echo share > \"$f\"; done",
        sb.app.join("three").display(),
        backing.display(),
        backing.join("three").display()
    ));
    let one = snapshot(&sb.app.join("one"));
    let share_two = snapshot(&backing.join("two"));
    let three = snapshot(&sb.app.join("three"));
    let _rig = LatencyFs::mount(
        &backing,
        &sb.share,
        &[
            "--delay-ms",
            "2",
            "--delete-pending",
            "--release-lag-ms",
            "100",
        ],
    );
    sb.write_config(true, links);
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(snapshot(&backing.join("one")), one);
    assert_eq!(snapshot(&backing.join("two")), share_two);
    assert_eq!(snapshot(&backing.join("three")), three);
    let kept: Vec<_> = fs::read_dir(backing.join(".sharelink/displaced/three"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 1, "{err}");
    // Whatever sharelink made and removed is gone, checked right after
    // the run (the next one would sweep a lock left behind): no staging
    // directory, no partial copy, no lock.
    assert_eq!(leftovers(&sb.app, &backing), Vec::<String>::new(), "{err}");
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert!(!stderr(&o).contains("ERROR"), "{}", stderr(&o));
    // And no name an unlinked open file kept, once the rig has seen the
    // last closes (it answers them 100 ms late).
    std::thread::sleep(Duration::from_millis(500));
    let mut left = leftovers(&sb.app, &backing);
    walk_names(&backing, &mut |p, name| {
        if name.starts_with(".delete-pending") {
            left.push(p.display().to_string());
        }
    });
    assert!(left.is_empty(), "left behind: {left:?}");
    report("share keeping unlinked open files (latency rig --delete-pending --release-lag-ms 100, 2 ms): 3 links migrated (one set aside, one image-wins replace), then a rerun: exit 0, no staging, partial copy or lock left after the first run, no pending name after the second");
}

/// Unmounts the FUSE share even when the test fails, so no bindfs daemon
/// outlives it.
struct Fuse(PathBuf);

impl Drop for Fuse {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A share that already holds data and has too little room for what must
/// be set aside (`if-empty`) or merged in (`merge`): refused before
/// copying (73), nothing written, the app intact; with room, it goes on.
#[test]
fn share_without_room_to_set_aside_or_merge_fails_before_copying() {
    if !in_private_mount_ns!("share_without_room_to_set_aside_or_merge_fails_before_copying") {
        return;
    }
    for mode in ["if-empty", "merge"] {
        let tmp = tempfile::tempdir().unwrap();
        let (app_root, tree) = baked(tmp.path(), 40, 1 << 20);
        let share = tmp.path().join("share");
        mount_tmpfs(&share, "4m");
        fs::create_dir_all(share.join("data")).unwrap();
        fs::write(share.join("data/theirs"), "the share's own").unwrap();
        let share_before = snapshot(&share);
        let cfg = write_cfg(
            tmp.path(),
            &app_root,
            &share,
            "",
            &format!("\"data\" = {{ share = \"data\", migrate = \"{mode}\" }}"),
        );
        std::thread::sleep(Duration::from_millis(150));
        let o = sharelink(&cfg).arg("link").output().unwrap();
        expect_code(&o, 73);
        assert!(
            stderr(&o).contains("Nothing was copied"),
            "{mode}: {}",
            stderr(&o)
        );
        assert_eq!(
            snapshot(&app_root.join("data")),
            tree,
            "{mode}: app changed"
        );
        let mut after = snapshot(&share);
        for own in [
            ".sharelink/locks",
            ".sharelink/displaced/data",
            ".sharelink/displaced",
            ".sharelink",
        ] {
            after.remove(Path::new(own));
        }
        assert_eq!(after, share_before, "{mode}: something was written");
        sh(&format!("mount -o remount,size=256m '{}'", share.display()));
        let o = sharelink(&cfg).arg("link").output().unwrap();
        expect_code(&o, 0);
        umount(&app_root);
        umount(&share);
    }
}

/// The share refusing sharelink's writes (a share owned by root, sharelink
/// started as another user): one explained error naming the uid, the share's
/// owner and mode and the fix, told once however many links fail for it.
#[test]
fn share_that_refuses_writes_is_explained_once() {
    if !require_root("share_that_refuses_writes_is_explained_once") {
        return;
    }
    let links = "\"a\" = \"a\"\n\"b\" = \"b\"\n\"c\" = \"c\"";
    let sb = Sandbox::new(links);
    sh(&format!("chmod -R a+rX '{}'", sb.root.path().display()));
    sh(&format!("chown -R 65534:65534 '{}'", sb.app.display()));
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
        .arg("--config")
        .arg(&sb.config)
        .arg("link")
        .env_remove("SHARELINK_LOG")
        .output()
        .unwrap();
    expect_code(&o, 73);
    let err = stderr(&o);
    assert!(
        err.contains("sharelink (uid 65534, gid 65534) cannot write to the share"),
        "{err}"
    );
    assert!(err.contains("owned by uid 0, gid 0, mode 0755"), "{err}");
    assert!(
        err.contains("uid=65534,gid=65534") && err.contains("run --user"),
        "{err}"
    );
    assert_eq!(err.matches("cannot write to the share").count(), 1, "{err}");
    assert_eq!(err.matches("the same error as above").count(), 2, "{err}");
}

/// The demo pipeline on an SMB-like share (bindfs refusing chmod and
/// chown, as Azure Files without unix extensions does): it runs to the end.
/// Before, its atomic writes died of `os.fchmod` → EPERM.
#[test]
fn demo_pipeline_runs_on_an_smb_like_share() {
    if !in_private_mount_ns!("demo_pipeline_runs_on_an_smb_like_share") {
        return;
    }
    let links = "\"forecasting/data\" = { share = \"forecasting/data\", dirs = [\"input\", \"output\"] }\n\
                 \"modelling/cache\" = { share = \"modelling/cache\", dirs = [\"sarima_params\", \"time_moe_cache\"] }\n\
                 \"modelling/predictions\" = \"modelling/predictions\"\n\
                 \"scraping/scraped_data\" = \"scraping/scraped_data\"";
    let sb = Sandbox::new(links);
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipeline");
    sh(&format!(
        "cp -a '{}/.' '{}'",
        demo.display(),
        sb.app.display()
    ));
    for d in [
        "forecasting/data/output",
        "modelling/cache/time_moe_cache",
        "modelling/predictions",
        "scraping/scraped_data",
    ] {
        fs::create_dir_all(sb.app.join(d)).unwrap();
    }
    let backing = sb.root.path().join("backing");
    mount_tmpfs(&backing, "256m");
    mount_bindfs(&backing, &sb.share, "--chmod-deny --chown-deny");
    let _fuse = Fuse(sb.share.clone());
    let o = sb
        .cmd()
        .current_dir(&sb.app)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["run", "--", "python3"])
        .arg(sb.app.join("run_pipeline.py"))
        .output()
        .unwrap();
    expect_code(&o, 0);
    let out = stdout(&o) + &stderr(&o);
    assert!(out.contains("all stages done"), "{out}");
    assert!(!out.contains("Operation not permitted"), "{out}");
    assert!(!snapshot(&backing.join("modelling/predictions")).is_empty());
    report("demo pipeline (examples/pipeline) on an SMB-like share (bindfs --chmod-deny --chown-deny): all stages done, exit 0");
}
