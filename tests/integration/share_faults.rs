//! The share misbehaving: full mid-migration, read-only, not mounted (and
//! mounted late), and SMB-like (refuses chmod/chown). A compact version of
//! the per-row checks, with the figures for docs/reliability.md.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::Tree;

use support::{expect_code, stderr};

/// An image layer on tmpfs and an overlay app root over it.
fn baked(base: &Path, files: usize, big: usize) -> (PathBuf, Tree) {
    support::mount_tmpfs(base, "1g");
    let lower = base.join("lower");
    support::make_tree(&lower.join("data"), files, big, 11);
    let tree = support::snapshot(&lower.join("data"));
    let app_root = support::mount_overlay(&base.join("ovl"), &lower);
    (app_root, tree)
}

fn write_cfg(base: &Path, app_root: &Path, share: &Path, extra: &str, links: &str) -> PathBuf {
    let cfg = base.join("sharelink.toml");
    fs::write(
        &cfg,
        support::config_text(app_root, share, true, extra, links),
    )
    .unwrap();
    cfg
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
            support::Node::File { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum();
    let share = tmp.path().join("share");
    support::mount_tmpfs(&share, "256m");
    let cfg = write_cfg(tmp.path(), &app_root, &share, "", "\"data\" = \"data\"");
    // The share has room when the copy starts; something else fills it
    // while sharelink is a third of the way through (it is stopped at that
    // point, the share filled, then it goes on).
    let child = support::sharelink(&cfg)
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
    support::wait_stopped(child.id(), Duration::from_secs(60));
    support::sh(&format!(
        "dd if=/dev/zero of='{}/filler' bs=1M 2>/dev/null; true",
        share.display()
    ));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let o = child.wait_with_output().unwrap();
    expect_code(&o, 73);
    assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
    // Original intact, nothing half-copied visible at the target.
    assert_eq!(support::snapshot(&app_root.join("data")), tree);
    assert!(!share.join("data").exists());
    // The partial copy is gone: a failed run does not leave the share full
    // for everyone else.
    fs::remove_file(share.join("filler")).unwrap();
    assert_eq!(support::leftovers(&app_root, &share), Vec::<String>::new());
    // Space freed: the rerun completes.
    let o = support::sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert_eq!(support::snapshot(&share.join("data")), tree);
    assert_eq!(
        fs::read_link(app_root.join("data")).unwrap(),
        share.join("data")
    );
    assert_eq!(support::leftovers(&app_root, &share), Vec::<String>::new());
    support::report(&format!(
        "full share: migration of {} entries ({bytes} bytes) into a share that another writer fills a sixth of the way through: exit 73, original intact, target not visible, partial copy removed; after space is freed: exit 0, all {} entries equal",
        tree.len(),
        tree.len()
    ));
}

#[test]
fn read_only_share_changes_nothing() {
    if !in_private_mount_ns!("read_only_share_changes_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (app_root, tree) = baked(tmp.path(), 100, 50_000);
    let share = tmp.path().join("share");
    support::mount_tmpfs(&share, "64m");
    // A share that was used before (has .sharelink/locks) and one that was not.
    let mut tried = 0;
    for used_before in [false, true] {
        if used_before {
            fs::create_dir_all(share.join(".sharelink/locks")).unwrap();
            fs::write(share.join("other_team_file"), "keep").unwrap();
        }
        support::sh(&format!("mount -o remount,ro '{}'", share.display()));
        let share_before = support::snapshot(&share);
        let cfg = write_cfg(
            tmp.path(),
            &app_root,
            &share,
            "",
            "\"data\" = \"data\"\n\"fresh/new\" = { share = \"new\", dirs = [\"in\"] }",
        );
        let o = support::sharelink(&cfg).arg("link").output().unwrap();
        expect_code(&o, 73);
        assert!(stderr(&o).contains("Read-only"), "{}", stderr(&o));
        assert_eq!(support::snapshot(&share), share_before);
        assert_eq!(support::snapshot(&app_root.join("data")), tree);
        support::sh(&format!("mount -o remount,rw '{}'", share.display()));
        tried += 1;
    }
    // Already linked on a share that has since gone read-only: nothing to
    // write, so `link` succeeds and `status` is healthy.
    let cfg = write_cfg(tmp.path(), &app_root, &share, "", "\"data\" = \"data\"");
    expect_code(&support::sharelink(&cfg).arg("link").output().unwrap(), 0);
    support::sh(&format!("mount -o remount,ro '{}'", share.display()));
    expect_code(&support::sharelink(&cfg).arg("link").output().unwrap(), 0);
    expect_code(&support::sharelink(&cfg).arg("status").output().unwrap(), 0);
    support::report(&format!(
        "read-only share: {tried} cases (fresh share, share used before): exit 73, share and app byte-for-byte unchanged; already-linked on read-only: exit 0"
    ));
}

#[test]
fn unmounted_share_touches_nothing_and_a_late_mount_is_used() {
    if !in_private_mount_ns!("unmounted_share_touches_nothing_and_a_late_mount_is_used") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (app_root, tree) = baked(tmp.path(), 100, 50_000);
    let share = tmp.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let links = "\"data\" = \"data\"\n\"made/new\" = \"new\"";
    // Not a mount point: 69, nothing touched on either side.
    let cfg = write_cfg(tmp.path(), &app_root, &share, "", links);
    let o = support::sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 69);
    assert!(stderr(&o).contains("not a mount point"), "{}", stderr(&o));
    assert!(support::names(&share).is_empty());
    assert_eq!(support::snapshot(&app_root.join("data")), tree);
    assert!(!app_root.join("made").exists());
    // share_root missing altogether: 69 as well.
    let gone = tmp.path().join("nowhere");
    let cfg_gone = write_cfg(tmp.path(), &app_root, &gone, "", links);
    expect_code(
        &support::sharelink(&cfg_gone).arg("link").output().unwrap(),
        69,
    );
    assert!(!gone.exists());
    // With mount_timeout, a mount that appears while waiting is used.
    let cfg = write_cfg(
        tmp.path(),
        &app_root,
        &share,
        "mount_timeout = \"60s\"",
        links,
    );
    let mut child = support::sharelink(&cfg)
        .arg("link")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "did not wait for the mount"
    );
    assert!(
        support::names(&share).is_empty(),
        "wrote into the unmounted share_root"
    );
    support::mount_tmpfs(&share, "64m");
    let s = support::wait_with_limit(
        &mut child,
        Duration::from_secs(60),
        "link waiting for the mount",
    );
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(s.success(), "{err}");
    assert!(err.contains("for the share:"), "{err}");
    assert_eq!(support::snapshot(&share.join("data")), tree);
    assert_eq!(
        fs::read_link(app_root.join("made/new")).unwrap(),
        share.join("new")
    );
    // Under the mount, the original directory got nothing.
    support::sh(&format!("umount -l '{}'", share.display()));
    assert!(support::names(&share).is_empty());
    support::report("unmounted share: not a mount point and missing share_root: exit 69, nothing touched; mount appearing 0.7 s into a 60 s mount_timeout: used, exit 0, data equal");
}

/// Unmounts the FUSE share even when the test fails, so no bindfs daemon
/// outlives it.
struct Fuse(PathBuf);
impl Drop for Fuse {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn smb_like_share_refusing_chmod_and_chown_warns_once_per_link() {
    if !in_private_mount_ns!("smb_like_share_refusing_chmod_and_chown_warns_once_per_link") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    support::mount_tmpfs(tmp.path(), "1g");
    let lower = tmp.path().join("lower");
    support::make_tree(&lower.join("data"), 300, 100_000, 21);
    support::make_tree(&lower.join("models/cache"), 50, 10_000, 22);
    // Owned by someone else than sharelink (root), so keeping owners takes
    // a chown, which this share refuses.
    support::sh(&format!("chown -R 4321:4321 '{}'", lower.display()));
    let data = support::snapshot(&lower.join("data"));
    let cache = support::snapshot(&lower.join("models/cache"));
    let app_root = support::mount_overlay(&tmp.path().join("ovl"), &lower);
    let backing = tmp.path().join("backing");
    let share = tmp.path().join("share");
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir_all(&share).unwrap();
    support::sh(&format!(
        "bindfs --chmod-deny --chown-deny '{}' '{}'",
        backing.display(),
        share.display()
    ));
    let _fuse = Fuse(share.clone());
    // Precondition: this share really refuses chmod.
    fs::write(share.join("probe"), "x").unwrap();
    let e = fs::set_permissions(
        share.join("probe"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    fs::remove_file(share.join("probe")).unwrap();

    let cfg = write_cfg(
        tmp.path(),
        &app_root,
        &share,
        "",
        "\"data\" = { share = \"data\", dirs = [\"in\"] }\n\"models/cache\" = \"cache\"\n\"empty/new\" = \"new\"",
    );
    let o = support::sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    let refused: Vec<&&str> = warnings.iter().filter(|l| l.contains("refused")).collect();
    // Exactly one per migrated link and kind (owners, modes), and no other
    // warnings.
    assert_eq!(refused.len(), 4, "{err}");
    assert_eq!(warnings.len(), 4, "{err}");
    for (share, kind) in [
        ("data", "owners"),
        ("data", "modes"),
        ("cache", "owners"),
        ("cache", "modes"),
    ] {
        assert_eq!(
            refused
                .iter()
                .filter(|l| l.contains(&format!("/share/{share} "))
                    && l.contains(&format!("kind={kind}")))
                .count(),
            1,
            "{share} {kind}: {err}"
        );
    }
    let mut got = support::snapshot(&share.join("data"));
    assert_eq!(got.remove(Path::new("in")), Some(support::Node::Dir));
    let (m, c, x, msgs) = support::diff(&data, &got, false, 5);
    assert_eq!((m, c, x), (0, 0, 0), "{msgs:?}");
    let (m, c, x, msgs) = support::diff(&cache, &support::snapshot(&share.join("cache")), false, 5);
    assert_eq!((m, c, x), (0, 0, 0), "{msgs:?}");
    assert_eq!(
        fs::read_link(app_root.join("data")).unwrap(),
        share.join("data")
    );
    expect_code(&support::sharelink(&cfg).arg("status").output().unwrap(), 0);
    // Re-runs are quiet.
    let o = support::sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
    support::report(&format!(
        "SMB-like share (bindfs --chmod-deny --chown-deny): 2 migrated links ({} entries) + 1 new link: exit 0, content equal (modes not kept), exactly 1 warning per migrated link, rerun silent",
        data.len() + cache.len()
    ));
}
