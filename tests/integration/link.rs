//! `sharelink link`, one state of a link at a time: what it finds at the
//! app path and the share target, and what it leaves there (plain
//! directories, and overlay or tmpfs where it matters).

use crate::support::*;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[test]
fn baked_dir_in_overlay_lower_layer_moves_to_tmpfs_share() {
    if !in_private_mount_ns!("baked_dir_in_overlay_lower_layer_moves_to_tmpfs_share") {
        return;
    }
    let sb = Sandbox::new("\"data\" = { share = \"data\", dirs = [\"input\", \"output\"] }");
    let lower = sb.root.path().join("lower");
    let n = make_tree(&lower.join("data"), 300, 200_000, 7);
    let before = snapshot(&lower.join("data"));
    assert!(before.len() > n);
    // The app root is an overlay whose baked data sits in the lower layer.
    let merged = mount_overlay(&sb.root.path().join("ovl"), &lower);
    fs::remove_dir(&sb.app).unwrap();
    std::os::unix::fs::symlink(&merged, &sb.app).unwrap();
    mount_tmpfs(&sb.share, "64m");
    // Precondition that makes this test mean something: rename gives EXDEV.
    let e = fs::rename(merged.join("data"), merged.join("moved")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));

    sb.write_config(
        true,
        "\"data\" = { share = \"data\", dirs = [\"input\", \"output\"] }",
    );
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(
        fs::read_link(merged.join("data")).unwrap(),
        sb.share.join("data")
    );
    let mut after = snapshot(&sb.share.join("data"));
    for d in ["input", "output"] {
        assert_eq!(after.remove(std::path::Path::new(d)), Some(Node::Dir));
    }
    assert_eq!(after, before);
    assert!(!sb.share.join(".data.sharelink-staging").exists());
    let o = sb.run(["status"]);
    expect_code(&o, 0);
}

#[test]
fn app_missing_creates_target_dirs_parents_and_absolute_symlink() {
    let sb = Sandbox::new(
        "\"deep/nested/data\" = { share = \"x/y/data\", dirs = [\"in\", \"out/sub\"] }",
    );
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let app = sb.app.join("deep/nested/data");
    let target = sb.share.join("x/y/data");
    assert!(lmeta(&app).file_type().is_symlink());
    let to = fs::read_link(&app).unwrap();
    assert!(
        to.is_absolute(),
        "symlink must be absolute: {}",
        to.display()
    );
    assert_eq!(to, target);
    for d in ["in", "out/sub"] {
        assert!(lmeta(&target.join(d)).is_dir(), "{d}");
    }
    // Nothing else appeared in the target; the app side holds only the link.
    assert_eq!(
        snapshot(&target).keys().cloned().collect::<Vec<_>>(),
        ["in", "out", "out/sub"].map(std::path::PathBuf::from)
    );
    assert_eq!(snapshot(&sb.app.join("deep/nested")).len(), 1);
    expect_code(&sb.run(["status"]), 0);
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("already linked"), "{}", stderr(&o));
}

#[test]
fn right_symlink_and_share_present_changes_nothing() {
    let sb = Sandbox::new("\"a/data\" = { share = \"data\", dirs = [\"in\"] }");
    expect_code(&sb.run(["link"]), 0);
    fs::write(sb.share.join("data/in/file"), "payload").unwrap();
    let (app, target) = (sb.app.join("a/data"), sb.share.join("data"));
    let watched = [
        app.clone(),
        sb.app.join("a"),
        target.clone(),
        target.join("in"),
        target.join("in/file"),
        sb.share.clone(),
    ];
    let before: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
    let tree = snapshot(&sb.share);
    // Make any rewrite visible even on coarse-mtime filesystems.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("already linked"), "{}", stderr(&o));
    let after: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
    for ((p, b), a) in watched.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{} changed (inode, mtime)", p.display());
    }
    // Nothing written anywhere in the share (locks included).
    assert_eq!(snapshot(&sb.share), tree);
}

#[test]
fn right_symlink_with_share_target_missing_recreates_it() {
    let sb = Sandbox::new("\"data\" = { share = \"s/data\", dirs = [\"in\", \"out\"] }");
    expect_code(&sb.run(["link"]), 0);
    fs::remove_dir_all(sb.share.join("s")).unwrap();
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("share-missing"), "{}", stdout(&o));
    let link_before = stamp(&sb.app.join("data"));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    for d in ["in", "out"] {
        assert!(lmeta(&sb.share.join("s/data").join(d)).is_dir());
    }
    assert_eq!(
        stamp(&sb.app.join("data")),
        link_before,
        "symlink was rewritten"
    );
    expect_code(&sb.run(["status"]), 0);
}

#[test]
fn symlink_elsewhere_is_replaced_with_a_warning() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let elsewhere = sb.root.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("keep"), "not ours").unwrap();
    std::os::unix::fs::symlink(&elsewhere, sb.app.join("data")).unwrap();
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("wrong-symlink"), "{}", stdout(&o));
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("WARN") && err.contains("pointed elsewhere") && err.contains("elsewhere"),
        "{err}"
    );
    assert_eq!(
        fs::read_link(sb.app.join("data")).unwrap(),
        sb.share.join("data")
    );
    // The old target is not ours: untouched, and nothing of it was moved.
    assert_eq!(
        fs::read_to_string(elsewhere.join("keep")).unwrap(),
        "not ours"
    );
    assert!(snapshot(&sb.share.join("data")).is_empty());
    // A relative symlink to the right place is also replaced by the absolute one.
    fs::remove_file(sb.app.join("data")).unwrap();
    std::os::unix::fs::symlink("../share/data", sb.app.join("data")).unwrap();
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("pointed elsewhere"), "{}", stderr(&o));
    assert_eq!(
        fs::read_link(sb.app.join("data")).unwrap(),
        sb.share.join("data")
    );
}

#[test]
fn baked_dir_moves_whole_into_missing_or_empty_share_target() {
    // "only-dirs": a share target holding nothing but empty directories
    // (the `dirs` an earlier image without baked data had created) counts
    // as empty: the baked data moves in rather than being set aside.
    for share_state in ["missing", "empty", "only-dirs"] {
        let sb = Sandbox::new("\"m/data\" = { share = \"s/data\", dirs = [\"input\"] }");
        let baked = sb.app.join("m/data");
        make_tree(&baked, 150, 100_000, 11);
        let before = snapshot(&baked);
        match share_state {
            "empty" => fs::create_dir_all(sb.share.join("s/data")).unwrap(),
            "only-dirs" => {
                fs::create_dir_all(sb.share.join("s/data/input")).unwrap();
                fs::create_dir_all(sb.share.join("s/data/d0_1/deeper")).unwrap();
            }
            _ => {}
        }
        let o = sb.run(["link"]);
        expect_code(&o, 0);
        let err = stderr(&o);
        assert!(err.contains("migrated"), "{share_state}: {err}");
        assert!(
            !err.contains("WARN"),
            "{share_state}: unexpected warning: {err}"
        );
        assert_eq!(fs::read_link(&baked).unwrap(), sb.share.join("s/data"));
        assert_eq!(
            without_dirs(snapshot(&sb.share.join("s/data")), &["input"]),
            before,
            "{share_state}"
        );
        if share_state == "only-dirs" {
            // The empty directories that stood there are not kept: the
            // baked tree replaced them (`dirs` are re-created).
            assert!(
                !sb.share.join("s/data/d0_1/deeper").exists()
                    || before.contains_key(Path::new("d0_1/deeper"))
            );
        }
        assert!(entries_containing(&sb.share.join("s"), "sharelink").is_empty());
        assert!(entries_containing(&sb.app.join("m"), "sharelink").is_empty());
        // No displaced copy when the share was empty.
        assert!(!sb.share.join(".sharelink/displaced").exists());
        expect_code(&sb.run(["status"]), 0);
    }
}
fn is_utc_stamp(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && (b.len() == 16 || (b[16] == b'-' && b[17..].iter().all(u8::is_ascii_digit)))
}

/// App tree and share tree that overlap: `both` (different content),
/// `sub/both`, app-only `app_only`, `sub/app_only`, `newdir/deep/f`,
/// an app file where the share has a directory (`clash`), share-only
/// `share_only`.
fn overlapping_trees(app: &Path, share: &Path) {
    for d in [app, share] {
        fs::create_dir_all(d.join("sub")).unwrap();
    }
    fs::write(app.join("both"), "app version").unwrap();
    fs::write(share.join("both"), "share version").unwrap();
    fs::write(app.join("sub/both"), "app sub").unwrap();
    fs::write(share.join("sub/both"), "share sub").unwrap();
    fs::write(app.join("app_only"), "only on app").unwrap();
    fs::write(app.join("sub/app_only"), "only on app, nested").unwrap();
    fs::create_dir_all(app.join("newdir/deep")).unwrap();
    fs::write(app.join("newdir/deep/f"), "deep app file").unwrap();
    fs::create_dir_all(app.join("newdir/empty")).unwrap();
    std::os::unix::fs::symlink("app_only", app.join("link_only")).unwrap();
    fs::write(app.join("clash"), "app file where the share has a dir").unwrap();
    fs::create_dir(share.join("clash")).unwrap();
    fs::write(share.join("clash/inside"), "share").unwrap();
    fs::write(share.join("share_only"), "only on share").unwrap();
}

#[test]
fn if_empty_keeps_the_share_and_sets_aside_what_differs_or_is_app_only() {
    let sb = Sandbox::new("\"m/data\" = \"data\"");
    let (app, target) = (sb.app.join("m/data"), sb.share.join("data"));
    overlapping_trees(&app, &target);
    let app_before = snapshot(&app);
    let share_before = snapshot(&target);
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(err.contains("WARN") && err.contains("displaced"), "{err}");
    // The share wins, entirely: nothing merged in, nothing overwritten.
    assert_eq!(snapshot(&target), share_before);
    assert_eq!(fs::read_link(&app).unwrap(), target);
    let stamps = displaced(&sb.share, "data");
    assert_eq!(stamps.len(), 1, "{stamps:?}");
    assert_eq!(leftovers(&sb.app, &sb.share), Vec::<String>::new());
    let name = stamps[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(is_utc_stamp(&name), "{name}");
    assert!(
        err.contains(&*stamps[0].to_string_lossy()),
        "warning names the place: {err}"
    );
    // Exactly the app-side entries that the share lacks or holds with
    // other content (`both`, `sub/both`) or another type (`clash`).
    let displaced = snapshot(&stamps[0]);
    let want: std::collections::BTreeMap<_, _> = app_before
        .iter()
        .filter(|(p, _)| {
            [
                "app_only",
                "sub/app_only",
                "newdir",
                "link_only",
                "clash",
                "both",
                "sub/both",
            ]
            .iter()
            .any(|top| p.starts_with(top))
        })
        .map(|(p, n)| (p.clone(), n.clone()))
        .collect();
    let displaced_without_sub: std::collections::BTreeMap<_, _> = displaced
        .into_iter()
        .filter(|(p, _)| p != Path::new("sub"))
        .collect();
    assert_eq!(displaced_without_sub, want);
    expect_code(&sb.run(["status"]), 0);
}

#[test]
fn merge_copies_app_only_files_in_without_overwriting() {
    let sb = Sandbox::new("\"data\" = { share = \"data\", migrate = \"merge\" }");
    let (app, target) = (sb.app.join("data"), sb.share.join("data"));
    overlapping_trees(&app, &target);
    let app_before = snapshot(&app);
    let share_before = snapshot(&target);
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(fs::read_link(&app).unwrap(), target);
    let after = snapshot(&target);
    // Every share entry kept as it was.
    for (p, n) in &share_before {
        assert_eq!(after.get(p), Some(n), "share's {} changed", p.display());
    }
    // Every app-only entry copied in, whole.
    for p in [
        "app_only",
        "sub/app_only",
        "newdir",
        "newdir/deep",
        "newdir/deep/f",
        "newdir/empty",
        "link_only",
    ] {
        assert_eq!(after.get(Path::new(p)), app_before.get(Path::new(p)), "{p}");
    }
    assert_eq!(
        fs::read_to_string(target.join("both")).unwrap(),
        "share version"
    );
    assert_eq!(
        fs::read_to_string(target.join("sub/both")).unwrap(),
        "share sub"
    );
    // What cannot be merged (an app file where the share has a directory,
    // files whose content differs) is kept aside, not dropped.
    let stamps = displaced(&sb.share, "data");
    assert_eq!(stamps.len(), 1, "{stamps:?}");
    assert_eq!(leftovers(&sb.app, &sb.share), Vec::<String>::new());
    for (p, want) in [
        ("clash", "app file where the share has a dir"),
        ("both", "app version"),
        ("sub/both", "app sub"),
    ] {
        assert_eq!(fs::read_to_string(stamps[0].join(p)).unwrap(), want, "{p}");
    }
    assert_eq!(after.len(), share_before.len() + 7);
    assert!(entries_containing(&sb.share, "sharelink-staging").is_empty());
    expect_code(&sb.run(["status"]), 0);
}

#[test]
fn regular_file_at_app_path_is_refused_and_other_links_still_run() {
    let sb = Sandbox::new("\"afile\" = \"a\"\n\"b\" = \"b\"");
    fs::write(sb.app.join("afile"), "precious").unwrap();
    let before = stamp(&sb.app.join("afile"));
    let o = sb.run(["link"]);
    expect_code(&o, 65);
    let err = stderr(&o);
    assert!(
        err.contains("afile") && err.contains("regular file"),
        "{err}"
    );
    assert_eq!(stamp(&sb.app.join("afile")), before);
    assert_eq!(
        fs::read_to_string(sb.app.join("afile")).unwrap(),
        "precious"
    );
    assert!(
        !sb.share.join("a").exists(),
        "refused link must not create its target"
    );
    // The later link was still made.
    assert_eq!(fs::read_link(sb.app.join("b")).unwrap(), sb.share.join("b"));
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    assert!(stdout(&o).contains("blocked"), "{}", stdout(&o));
}
#[test]
fn non_directory_where_a_share_dir_belongs_is_refused() {
    // (what to put where, share path, dirs)
    let cases = [
        ("a", "a/b", "[]"),            // a parent of the target
        ("a/b", "a/b", "[]"),          // the target itself
        ("a/b/in", "a/b", "[\"in\"]"), // a `dirs` entry
        ("a/b/x", "a/b", "[\"x/y\"]"), // a parent of a `dirs` entry
    ];
    for (file, share, dirs) in cases {
        for baked in [false, true] {
            let sb = Sandbox::new(&format!(
                "\"data\" = {{ share = {share:?}, dirs = {dirs} }}"
            ));
            fs::create_dir_all(sb.share.join(file).parent().unwrap()).unwrap();
            fs::write(sb.share.join(file), "a file").unwrap();
            if baked {
                make_tree(&sb.app.join("data"), 10, 100, 9);
            }
            let app_before = snapshot(&sb.app);
            let share_before = snapshot(&sb.share);
            let o = sb.run(["link"]);
            let what = format!("file at {file}, baked={baked}");
            assert_eq!(code(&o), 65, "{what}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(&*sb.share.join(file).to_string_lossy()),
                "{what}: {}",
                stderr(&o)
            );
            assert_eq!(snapshot(&sb.app), app_before, "{what}");
            assert_eq!(snapshot(&sb.share), share_before, "{what}");
        }
    }
}

#[test]
fn mount_at_or_below_the_app_path_is_refused_untouched() {
    if !in_private_mount_ns!("mount_at_or_below_the_app_path_is_refused_untouched") {
        return;
    }
    // A volume mounted over the app directory (or inside it) cannot be
    // replaced by a symlink: sharelink must refuse before copying or
    // deleting anything, not empty the volume and then fail on EBUSY.
    for (mount_at, what) in [("data", "at the app path"), ("data/cache", "below it")] {
        let sb = Sandbox::new("\"data\" = \"data\"\n\"other\" = \"other\"");
        fs::create_dir_all(sb.app.join("data")).unwrap();
        fs::write(sb.app.join("data/baked"), "baked").unwrap();
        mount_tmpfs(&sb.app.join(mount_at), "16m");
        fs::write(sb.app.join(mount_at).join("on_volume"), "volume data").unwrap();
        let app_before = snapshot(&sb.app);
        let o = sb.run(["link"]);
        assert_eq!(code(&o), 65, "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("mount point"), "{what}: {err}");
        assert!(
            err.contains(&*sb.app.join(mount_at).to_string_lossy()),
            "{what}: {err}"
        );
        assert_eq!(
            snapshot(&sb.app.join("data")),
            {
                app_before
                    .iter()
                    .filter_map(|(p, n)| {
                        Some((p.strip_prefix("data").ok()?.to_path_buf(), n.clone()))
                    })
                    .filter(|(p, _)| !p.as_os_str().is_empty())
                    .collect()
            },
            "{what}: app data changed"
        );
        assert!(!sb.share.join("data").exists(), "{what}: copied anyway");
        // The other link is still made.
        assert_eq!(
            fs::read_link(sb.app.join("other")).unwrap(),
            sb.share.join("other")
        );
        let o = sb.run(["status"]);
        expect_code(&o, 1);
        assert!(stdout(&o).contains("blocked"), "{}", stdout(&o));
        umount(&sb.app.join(mount_at));
    }
}

#[test]
fn read_only_app_root_exits_73_before_copying_anything() {
    if !in_private_mount_ns!("read_only_app_root_exits_73_before_copying_anything") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    make_tree(&sb.app.join("data"), 30, 1000, 3);
    let before = snapshot(&sb.app);
    // A container run with a read-only root filesystem.
    mount_ro_bind(&sb.app, &sb.app);
    let o = sb.run(["link"]);
    expect_code(&o, 73);
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
    assert_eq!(snapshot(&sb.app), before);
    // Nothing was copied: the share holds no data, only sharelink's lock dir.
    assert!(!sb.share.join("data").exists());
    assert!(entries_containing(&sb.share, "data").is_empty());
}

#[test]
fn overlay_with_upper_layer_changes_mixed_in_migrates_the_merged_view() {
    if !in_private_mount_ns!("overlay_with_upper_layer_changes_mixed_in_migrates_the_merged_view") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    let lower = sb.root.path().join("lower");
    make_tree(&lower.join("data"), 120, 50_000, 21);
    let merged = mount_overlay(&sb.root.path().join("ovl"), &lower);
    fs::remove_dir(&sb.app).unwrap();
    std::os::unix::fs::symlink(&merged, &sb.app).unwrap();
    let data = merged.join("data");
    // Container writes on top of the image layer: new files and dirs (upper
    // only), a lower file modified (copied up), a lower file deleted
    // (whiteout), a lower directory replaced (opaque).
    fs::write(data.join("new_in_upper"), "written at run time").unwrap();
    fs::create_dir_all(data.join("upper_dir/x")).unwrap();
    fs::write(data.join("upper_dir/x/f"), "upper").unwrap();
    let lower_files: Vec<_> = snapshot(&data)
        .into_iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(p, _)| p)
        .collect();
    fs::write(data.join(&lower_files[0]), "modified: copied up").unwrap();
    fs::remove_file(data.join(&lower_files[1])).unwrap();
    fs::remove_dir_all(data.join("empty")).unwrap();
    fs::create_dir(data.join("empty")).unwrap();
    fs::write(data.join("empty/now_full"), "opaque dir").unwrap();
    let before = snapshot(&data);
    mount_tmpfs(&sb.share, "64m");
    sb.write_config(true, "\"data\" = \"data\"");
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(fs::read_link(&data).unwrap(), sb.share.join("data"));
    assert_eq!(snapshot(&sb.share.join("data")), before);
    // The image layer itself is untouched (overlay wrote whiteouts).
    assert!(lower.join("data").join(&lower_files[1]).exists());
    expect_code(&sb.run(["status"]), 0);
}

#[test]
fn empty_baked_dir_makes_the_share_target_with_its_owner_and_mode() {
    let sb = Sandbox::new("\"out\" = \"out\"");
    let app = sb.app.join("out");
    fs::create_dir(&app).unwrap();
    fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&app, Some(4321), Some(4322)).unwrap();
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let target = sb.share.join("out");
    assert_eq!(fs::read_link(&app).unwrap(), target);
    let m = lmeta(&target);
    assert!(m.is_dir());
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 4321, 4322));
    expect_code(&sb.run(["status"]), 0);
}

#[test]
fn run_links_first_then_starts_the_command_with_its_status() {
    let sb = Sandbox::new("\"m/data\" = { share = \"s/data\", dirs = [\"out\"] }");
    let baked = sb.app.join("m/data");
    make_tree(&baked, 40, 10_000, 5);
    let before = snapshot(&baked);
    // The command sees the link already made and the baked data through it,
    // writes through it, and its exit status is sharelink's.
    let script = format!(
        "test \"$(readlink {app})\" = {share} && test -d {app}/out && ls {app}/empty >/dev/null && echo written > {app}/out/result && exit 7",
        app = baked.display(),
        share = sb.share.join("s/data").display()
    );
    let o = sb.run(["run", "--", "sh", "-c", &script]);
    expect_code(&o, 7);
    assert_eq!(
        fs::read_to_string(sb.share.join("s/data/out/result")).unwrap(),
        "written\n"
    );
    let mut after = snapshot(&sb.share.join("s/data"));
    after.remove(Path::new("out/result"));
    assert_eq!(without_dirs(after, &["out"]), before);
    // Linking errors keep the command from starting.
    fs::remove_file(&baked).unwrap();
    fs::write(&baked, "a file where the data directory belongs").unwrap();
    let marker = sb.root.path().join("started");
    let o = sb.run(["run", "--", "touch", marker.to_str().unwrap()]);
    expect_code(&o, 65);
    assert!(!marker.exists(), "the command ran despite a linking error");
}

/// The pipeline replaced its symlink with a directory and wrote there; a
/// `sharelink link` by hand then sets those writes aside. `status` says so
/// before, the log when it happens; the log line gives the state reached
/// (`state=linked`) and the one found (`was=needs-migration`).
#[test]
fn link_by_hand_after_the_pipeline_replaced_its_symlink_says_where_its_writes_went() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    fs::create_dir_all(sb.app.join("data")).unwrap();
    fs::write(sb.app.join("data/baked.csv"), "baked\n").unwrap();
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("state=linked") && err.contains("was=needs-migration"),
        "{err}"
    );
    assert!(
        err.contains("migrated 1 file, 6 bytes, 0 symlinks, 0 dirs"),
        "{err}"
    );
    // The pipeline: rm the symlink, mkdir, write.
    fs::remove_file(sb.app.join("data")).unwrap();
    fs::create_dir(sb.app.join("data")).unwrap();
    fs::write(sb.app.join("data/fresh.csv"), "fresh\n").unwrap();
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    let out = stdout(&o);
    assert!(
        out.contains("needs-migration") && out.contains("pipeline replaced the symlink"),
        "{out}"
    );
    assert!(out.contains(".sharelink/displaced/"), "{out}");
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("set aside 1 entry in") && err.contains("its writes are among them"),
        "{err}"
    );
    let kept: Vec<_> = snapshot(&sb.share.join(".sharelink/displaced"))
        .into_keys()
        .filter(|p| p.ends_with("fresh.csv"))
        .collect();
    assert_eq!(kept.len(), 1, "{err}");
}
