//! What the first landing got wrong, one test per class: equality taken
//! from size and mtime, a volume emptied because a mount name was not
//! UTF-8, a migration that could never finish started anyway, and staging
//! paths longer than PATH_MAX.

use crate::support::*;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn set_mtime(p: &Path, t: SystemTime) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

/// A file set aside once, then a different file with the same size and
/// mtime (reproducible builds, `tar -x`, SOURCE_DATE_EPOCH) at the same
/// path: it must be set aside too, not taken for the one already kept.
/// `share_has_it`: the share holds its own version of the file (a
/// conflict); otherwise the file is only in the app (set aside because the
/// share target is not empty and the mode is `if-empty`).
fn same_size_and_mtime_is_not_same_content(share_has_it: bool) {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let (app, target) = (sb.app.join("data"), sb.share.join("data"));
    fs::create_dir_all(&target).unwrap();
    let share_file = if share_has_it {
        "model.bin"
    } else {
        "share-only.txt"
    };
    fs::write(target.join(share_file), "the share's own file").unwrap();
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (round, content) in [(1, "AAAA-baked-v1"), (2, "BBBB-baked-v2")] {
        // A new container: the image's data directory again.
        let _ = fs::remove_file(&app);
        fs::create_dir_all(&app).unwrap();
        fs::write(app.join("model.bin"), content).unwrap();
        set_mtime(&app.join("model.bin"), epoch);
        std::thread::sleep(Duration::from_millis(150));
        let o = sb.run(["link"]);
        expect_code(&o, 0);
        assert_eq!(fs::read_link(&app).unwrap(), target, "round {round}");
        assert_eq!(
            fs::read_to_string(target.join(share_file)).unwrap(),
            "the share's own file"
        );
        assert_eq!(target.join("model.bin").exists(), share_has_it);
        let kept: Vec<String> = displaced(&sb.share, "data")
            .iter()
            .map(|s| fs::read_to_string(s.join("model.bin")).unwrap())
            .collect();
        assert!(
            kept.contains(&content.to_string()),
            "round {round}: {kept:?}"
        );
        assert_eq!(kept.len(), round, "round {round}: {kept:?}");
    }
    // The same bytes a third time: recognised (by content) as kept.
    fs::remove_file(&app).unwrap();
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("model.bin"), "BBBB-baked-v2").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(displaced(&sb.share, "data").len(), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("already set aside"), "{}", stderr(&o));
}

#[test]
fn same_size_and_mtime_as_a_kept_conflict_is_not_same_content() {
    same_size_and_mtime_is_not_same_content(true);
}

#[test]
fn same_size_and_mtime_as_a_kept_app_only_file_is_not_same_content() {
    same_size_and_mtime_is_not_same_content(false);
}

/// A volume bind-mounted into a data directory from the same filesystem
/// (so only the mount table can tell), while another mount point's name is
/// not UTF-8: the mount table is read as bytes, the volume found, the link
/// refused, and nothing of the volume touched.
#[test]
fn volume_inside_data_dir_is_found_even_with_non_utf8_mount_names() {
    if !in_private_mount_ns!("volume_inside_data_dir_is_found_even_with_non_utf8_mount_names") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let fsroot = root.path().join("fs");
    mount_tmpfs(&fsroot, "64m");
    let odd = root
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9-\xff"));
    fs::create_dir_all(&odd).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&odd)
        .status()
        .unwrap();
    assert!(st.success());
    let app_root = fsroot.join("app");
    let share = fsroot.join("share");
    fs::create_dir_all(app_root.join("data/vol")).unwrap();
    fs::create_dir_all(&share).unwrap();
    fs::write(app_root.join("data/baked.txt"), "baked").unwrap();
    let source = fsroot.join("volume-source");
    make_tree(&source, 20, 500, 3);
    let volume = snapshot(&source);
    sh(&format!(
        "mount --bind '{}' '{}'",
        source.display(),
        app_root.join("data/vol").display()
    ));
    assert_eq!(
        fs::metadata(app_root.join("data/vol")).unwrap().dev(),
        fs::metadata(app_root.join("data")).unwrap().dev(),
        "the bind mount is on the same device: only the mount table shows it"
    );
    let cfg = root.path().join("sharelink.toml");
    fs::write(
        &cfg,
        format!(
            "app_root = {app_root:?}\nshare_root = {share:?}\nrequire_mount = false\n[links]\n\"data\" = \"data\"\n"
        ),
    )
    .unwrap();
    let o = sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 65);
    assert!(stderr(&o).contains("mount point"), "{}", stderr(&o));
    assert_eq!(snapshot(&source), volume, "the volume was touched");
    assert!(fs::symlink_metadata(app_root.join("data"))
        .unwrap()
        .is_dir());
    assert!(!share.join("data").exists());
    umount(&app_root.join("data/vol"));
    let _ = std::process::Command::new("umount").arg(&odd).status();
}

/// sharelink run as a user who cannot empty the data directory: refused
/// before anything is copied (it would otherwise copy everything, fail to
/// delete, and do so again on every start).
#[test]
fn app_dir_that_cannot_be_emptied_fails_before_copying_as_non_root() {
    if !require_root("app_dir_that_cannot_be_emptied_fails_before_copying_as_non_root") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    make_tree(&sb.app.join("data"), 30, 1000, 4);
    // Everything readable and searchable by others, owned by root.
    sh(&format!("chmod -R a+rX '{}'", sb.root.path().display()));
    let before = snapshot(&sb.app.join("data"));
    sh(&format!("chown -R 65534:65534 '{}'", sb.share.display()));
    std::thread::sleep(Duration::from_millis(150));
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
        err.contains("could not empty") && err.contains("copied nothing"),
        "{err}"
    );
    assert!(err.contains("uid 65534"), "{err}");
    assert_eq!(snapshot(&sb.app.join("data")), before);
    assert!(!sb.share.join("data").exists());
    assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
}

/// Root, but a directory in the tree is immutable: the same early refusal.
#[test]
fn app_dir_with_an_immutable_subdirectory_fails_before_copying() {
    if !require_root("app_dir_with_an_immutable_subdirectory_fails_before_copying") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    make_tree(&sb.app.join("data"), 30, 1000, 5);
    let locked = sb.app.join("data/locked");
    fs::create_dir_all(&locked).unwrap();
    fs::write(locked.join("f"), "x").unwrap();
    let chattr = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&locked)
        .output()
        .unwrap();
    if !chattr.status.success() {
        skip_or_fail(
            "app_dir_with_an_immutable_subdirectory_fails_before_copying",
            &format!(
                "the temporary directory's filesystem has no immutable flag: chattr +i: {}",
                String::from_utf8_lossy(&chattr.stderr).trim()
            ),
            "run it with TMPDIR on ext4, xfs or btrfs",
        );
        return;
    }
    let before = snapshot(&sb.app.join("data"));
    std::thread::sleep(Duration::from_millis(150));
    let o = sb.run(["link"]);
    sh(&format!("chattr -i '{}'", locked.display()));
    expect_code(&o, 73);
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
    assert_eq!(snapshot(&sb.app.join("data")), before);
    assert!(!sb.share.join("data").exists());
    assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
    // Once the flag is gone the migration goes through.
    expect_code(&sb.run(["link"]), 0);
    assert_eq!(snapshot(&sb.share.join("data")), before);
}

/// The share target's paths fit in PATH_MAX but the same files in the
/// staging directory beside it (20-odd bytes longer) would not: every
/// operation is relative to an open directory, so it does not matter.
#[test]
fn staging_deeper_than_path_max_still_migrates() {
    let sb = Sandbox::new("\"x\" = \"x\"");
    let base = sb.share.as_os_str().len();
    // A share path of 200-byte components, up to about 3,700 bytes.
    let comp = "s".repeat(200);
    let mut share_rel = PathBuf::new();
    while base + share_rel.as_os_str().len() < 3_500 {
        share_rel.push(&comp);
    }
    share_rel.push("data");
    // A file whose path below the target takes it to just under PATH_MAX.
    let target_len = base + 1 + share_rel.as_os_str().len();
    let room = 4_090 - target_len;
    let mut rel = PathBuf::new();
    while room - rel.as_os_str().len() > 201 {
        rel.push("d".repeat(200));
    }
    rel.push("f".repeat(room - rel.as_os_str().len() - 1));
    assert!(target_len + 1 + rel.as_os_str().len() <= 4_095);
    assert!(
        target_len + ".sharelink-staging/tree/".len() + 1 + rel.as_os_str().len() > 4_095,
        "the staging path must not fit"
    );
    let app = sb.app.join("data");
    fs::create_dir_all(app.join(rel.parent().unwrap())).unwrap();
    fs::write(app.join(&rel), "deep").unwrap();
    sb.write_config(
        false,
        &format!("\"data\" = {:?}", share_rel.to_str().unwrap()),
    );
    std::thread::sleep(Duration::from_millis(150));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let target = sb.share.join(&share_rel);
    assert_eq!(fs::read_link(&app).unwrap(), target);
    assert_eq!(fs::read_to_string(target.join(&rel)).unwrap(), "deep");
    expect_code(&sb.run(["status"]), 0);
}

/// The app directory and the share directory are one directory, joined by
/// something a path does not show: a volume of the share's parent left
/// mounted over the app, a symlinked `app_root`, the share mounted at
/// `app_root`. Every file would be "already on the share" and deleted;
/// instead the link is refused (65) and nothing is touched.
#[test]
fn app_dir_that_is_the_share_dir_is_refused_and_untouched() {
    if !in_private_mount_ns!("app_dir_that_is_the_share_dir_is_refused_and_untouched") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    for variant in [
        "bind of the parent",
        "symlinked app_root",
        "share at app_root",
    ] {
        let base = root.path().join(variant.replace(' ', "-"));
        let host = base.join("host");
        mount_tmpfs(&host, "16m");
        let (share, app_root) = (base.join("share"), base.join("app"));
        make_tree(&host.join("forecasting/data/output"), 12, 400, 7);
        let before = snapshot(&host);
        fs::create_dir_all(&share).unwrap();
        sh(&format!(
            "mount --bind '{}' '{}'",
            host.display(),
            share.display()
        ));
        match variant {
            "bind of the parent" => {
                fs::create_dir_all(app_root.join("forecasting")).unwrap();
                sh(&format!(
                    "mount --bind '{}' '{}'",
                    host.join("forecasting").display(),
                    app_root.join("forecasting").display()
                ));
            }
            "symlinked app_root" => std::os::unix::fs::symlink(&share, &app_root).unwrap(),
            _ => {
                fs::create_dir_all(&app_root).unwrap();
                sh(&format!(
                    "mount --bind '{}' '{}'",
                    share.display(),
                    app_root.display()
                ));
            }
        }
        let cfg = base.join("sharelink.toml");
        fs::write(
            &cfg,
            format!(
                "app_root = {app_root:?}\nshare_root = {share:?}\n[links]\n\"forecasting/data\" = {{ share = \"forecasting/data\", dirs = [\"input\", \"output\"] }}\n"
            ),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        for cmd in [&["link"][..], &["run", "--", "true"]] {
            let o = sharelink(&cfg).args(cmd).output().unwrap();
            expect_code(&o, 65);
            assert!(
                stderr(&o).contains("are one directory"),
                "{variant}: {}",
                stderr(&o)
            );
        }
        let o = sharelink(&cfg).arg("status").output().unwrap();
        expect_code(&o, 1);
        assert!(stdout(&o).contains("blocked"), "{variant}: {}", stdout(&o));
        assert_eq!(snapshot(&host), before, "{variant}: the data was touched");
    }
}

/// Names that differ only in case (`Report.csv`, `report.csv`; `Out/`,
/// `out/`) on a share that ignores case, as SMB does: before, both were
/// copied onto one name, one version was lost and `link` exited 0. Now
/// the link is refused before copying (65), naming each pair, in both
/// modes; on a share that tells case apart the same tree migrates.
#[test]
fn names_differing_only_in_case_are_refused_on_a_case_insensitive_share() {
    use crate::support::latencyfs::LatencyFs;
    if !in_private_mount_ns!("names_differing_only_in_case_are_refused_on_a_case_insensitive_share")
    {
        return;
    }
    let bake = |app: &Path| {
        fs::create_dir_all(app.join("Out")).unwrap();
        fs::create_dir_all(app.join("out")).unwrap();
        fs::write(app.join("Report.csv"), "v1").unwrap();
        fs::write(app.join("report.csv"), "v2").unwrap();
        fs::write(app.join("Out/a.txt"), "from Out").unwrap();
        fs::write(app.join("out/a.txt"), "from out").unwrap();
        fs::write(app.join("plain.txt"), "no twin").unwrap();
    };
    for (mode, share_has_data) in [("if-empty", false), ("merge", true)] {
        let sb = Sandbox::new(&format!(
            "\"data\" = {{ share = \"data\", migrate = \"{mode}\" }}"
        ));
        let backing = sb.path("backing");
        mount_tmpfs(&backing, "16m");
        let rig = LatencyFs::mount(&backing, &sb.share, &["--case-insensitive"]);
        if share_has_data {
            fs::create_dir_all(rig.mnt.join("data")).unwrap();
            fs::write(rig.mnt.join("data/theirs"), "share data").unwrap();
        }
        let app = sb.app.join("data");
        bake(&app);
        let before = snapshot(&app);
        let share_before = snapshot(&backing);
        std::thread::sleep(Duration::from_millis(150));
        let o = sb.run(["link"]);
        expect_code(&o, 65);
        let err = stderr(&o);
        assert!(
            err.contains("Report.csv and")
                && err.contains("/Out and")
                && err.contains("differ only in case"),
            "{mode}: {err}"
        );
        assert_eq!(snapshot(&app), before, "{mode}: app changed");
        let mut after = snapshot(&backing);
        after.remove(Path::new(".sharelink/locks"));
        after.remove(Path::new(".sharelink"));
        assert_eq!(after, share_before, "{mode}: share changed");
        drop(rig);
        umount(&backing);
    }
    // The share target on a case-insensitive mount below a share_root
    // that tells case apart: the share target's side is asked too.
    let sb = Sandbox::new("\"data\" = \"ci/data\"");
    let backing = sb.path("backing");
    mount_tmpfs(&backing, "16m");
    let rig = LatencyFs::mount(&backing, &sb.share.join("ci"), &["--case-insensitive"]);
    bake(&sb.app.join("data"));
    let before = snapshot(&sb.app.join("data"));
    std::thread::sleep(Duration::from_millis(150));
    let o = sb.run(["link"]);
    expect_code(&o, 65);
    assert!(stderr(&o).contains("differ only in case"), "{}", stderr(&o));
    assert_eq!(snapshot(&sb.app.join("data")), before);
    assert!(snapshot(&backing).is_empty(), "something was copied");
    drop(rig);
    umount(&backing);
    // The same tree on a share that tells case apart.
    let sb = Sandbox::new("\"data\" = \"data\"");
    bake(&sb.app.join("data"));
    let before = snapshot(&sb.app.join("data"));
    std::thread::sleep(Duration::from_millis(150));
    expect_code(&sb.run(["link"]), 0);
    assert_eq!(snapshot(&sb.share.join("data")), before);
}

/// The same, joined through a bind mount that no path shows: `share_root`
/// a bind of a directory inside the data directory, or `app_root` a bind
/// of a directory inside the share target. Compared by where both live in
/// their filesystem; refused (65), nothing touched.
#[test]
fn app_dir_nested_with_the_share_dir_through_a_bind_mount_is_refused() {
    if !in_private_mount_ns!("app_dir_nested_with_the_share_dir_through_a_bind_mount_is_refused") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    for variant in ["share inside the app dir", "app dir inside the share"] {
        let base = root.path().join(variant.replace(' ', "-"));
        let host = base.join("host");
        mount_tmpfs(&host, "16m");
        let (share, app_root) = (base.join("share"), base.join("app"));
        fs::create_dir_all(&share).unwrap();
        fs::create_dir_all(&app_root).unwrap();
        let app_root = if variant == "share inside the app dir" {
            let app_root = host.join("app");
            make_tree(&app_root.join("data/store"), 6, 300, 8);
            make_tree(&app_root.join("data/mine"), 6, 300, 9);
            sh(&format!(
                "mount --bind '{}' '{}'",
                app_root.join("data/store").display(),
                share.display()
            ));
            app_root
        } else {
            make_tree(&host.join("data/sub/data"), 6, 300, 10);
            sh(&format!(
                "mount --bind '{}' '{}'",
                host.display(),
                share.display()
            ));
            sh(&format!(
                "mount --bind '{}' '{}'",
                host.join("data/sub").display(),
                app_root.display()
            ));
            app_root
        };
        let before = snapshot(&host);
        let cfg = base.join("sharelink.toml");
        fs::write(
            &cfg,
            format!(
                "app_root = {app_root:?}\nshare_root = {share:?}\n[links]\n\"data\" = \"data\"\n"
            ),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let o = sharelink(&cfg).arg("link").output().unwrap();
        expect_code(&o, 65);
        assert!(
            stderr(&o).contains("are one directory"),
            "{variant}: {}",
            stderr(&o)
        );
        assert_eq!(snapshot(&host), before, "{variant}: the data was touched");
    }
}

/// A bind of the app directory once mounted at the share target and then
/// hidden by the share mounted over `share_root`: the mount table still
/// lists the hidden bind, but the share target is on the share. Not
/// refused.
#[test]
fn a_hidden_bind_below_share_root_is_not_taken_for_a_join() {
    if !in_private_mount_ns!("a_hidden_bind_below_share_root_is_not_taken_for_a_join") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let host = root.path().join("host");
    mount_tmpfs(&host, "16m");
    let (app_root, share) = (host.join("app"), root.path().join("share"));
    make_tree(&app_root.join("data"), 5, 200, 12);
    let before = snapshot(&app_root.join("data"));
    fs::create_dir_all(share.join("data")).unwrap();
    sh(&format!(
        "mount --bind '{}' '{}'",
        app_root.display(),
        share.join("data").display()
    ));
    mount_tmpfs(&share, "16m");
    let cfg = root.path().join("sharelink.toml");
    fs::write(
        &cfg,
        config_text(&app_root, &share, true, "", "\"data\" = \"data\""),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let o = sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert_eq!(snapshot(&share.join("data")), before);
}
