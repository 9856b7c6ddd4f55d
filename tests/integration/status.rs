//! What `status` and `link --dry-run` report, and that they write nothing.

use crate::support::*;

use std::fs;
use std::time::Duration;

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let links = "\"baked\" = \"baked\"\n\"missing\" = { share = \"m\", dirs = [\"in\"] }\n\"wrong\" = \"wrong\"\n\"keep\" = \"keep\"";
    let sb = Sandbox::new(links);
    make_tree(&sb.app.join("baked"), 20, 100, 2);
    std::os::unix::fs::symlink("/nowhere", sb.app.join("wrong")).unwrap();
    make_tree(&sb.app.join("keep"), 5, 10, 4);
    make_tree(&sb.share.join("keep"), 5, 10, 8);
    let (app_before, share_before) = (snapshot(&sb.app), snapshot(&sb.share));
    let o = sb.run(["link", "--dry-run"]);
    expect_code(&o, 0);
    let out = stdout(&o);
    for want in [
        "needs-migration",
        "move the baked directory",
        "unlinked",
        "create dirs in",
        "wrong-symlink",
        "/nowhere",
        "displaced",
    ] {
        assert!(out.contains(want), "plan lacks {want:?}:\n{out}");
    }
    assert_eq!(snapshot(&sb.app), app_before);
    assert_eq!(snapshot(&sb.share), share_before);
    // A dry run exits as `link` would.
    fs::write(sb.app.join("missing"), "file").unwrap();
    let o = sb.run(["link", "--dry-run"]);
    expect_code(&o, 65);
    assert!(stdout(&o).contains("blocked"), "{}", stdout(&o));
    fs::remove_file(sb.app.join("missing")).unwrap();
    // After linking, the plan is empty.
    expect_code(&sb.run(["link"]), 0);
    let o = sb.run(["link", "--dry-run"]);
    expect_code(&o, 0);
    assert_eq!(
        stdout(&o).matches("nothing to do").count(),
        4,
        "{}",
        stdout(&o)
    );
}

#[test]
fn status_text_and_json() {
    let sb = Sandbox::new("\"a\" = \"a\"\n\"b\" = { share = \"b\", dirs = [\"in\"] }");
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    assert_eq!(stdout(&o).matches("unlinked").count(), 2, "{}", stdout(&o));
    let o = sb.run(["status", "--json"]);
    expect_code(&o, 1);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["healthy"], false);
    assert_eq!(v["links"].as_array().unwrap().len(), 2);
    assert_eq!(v["links"][0]["state"], "unlinked");
    assert_eq!(v["links"][0]["app"], sb.app.join("a").to_str().unwrap());
    expect_code(&sb.run(["link"]), 0);
    let o = sb.run(["status", "--json"]);
    expect_code(&o, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["healthy"], true);
    assert!(v["links"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["state"] == "linked"));
    // A missing `dirs` entry makes it unhealthy again.
    fs::remove_dir(sb.share.join("b/in")).unwrap();
    let o = sb.run(["status", "--json"]);
    expect_code(&o, 1);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["links"][1]["state"], "dirs-missing");
    // status never writes.
    assert!(!sb.share.join("b/in").exists());
}

/// A migration that takes a while says how far it is: INFO lines with files
/// and bytes of the total, rate and time left, whose bytes move during a big
/// file (not only once it is done), and `status` from another process says
/// `migrating` with the holder and its progress instead of a bare lock.
#[test]
fn a_long_migration_reports_progress_in_the_log_and_in_status() {
    use crate::support::latencyfs::LatencyFs;
    use std::io::Read;
    if !in_private_mount_ns!("a_long_migration_reports_progress_in_the_log_and_in_status") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    fs::create_dir_all(app.join("data")).unwrap();
    // One file of 64 MiB: every write to the share is a request that waits
    // 10 ms on the rig, so its copy takes seconds.
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(app.join("data/model.bin"), &big).unwrap();
    let rig = LatencyFs::mount(
        &tmp.path().join("backing"),
        &tmp.path().join("share"),
        &["--delay-ms", "10"],
    );
    let cfg = tmp.path().join("sharelink.toml");
    fs::write(
        &cfg,
        config_text(&app, &rig.mnt, false, "", "\"data\" = \"data\""),
    )
    .unwrap();
    let mut child = sharelink(&cfg)
        .arg("link")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = None;
    while child.try_wait().unwrap().is_none() && seen.is_none() {
        let o = sharelink(&cfg).arg("status").output().unwrap();
        let out = stdout(&o);
        if out.contains("migrating") && out.contains("files") {
            seen = Some(out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{err}");
    let seen = seen.unwrap_or_else(|| panic!("status never said migrating:\n{err}"));
    assert!(seen.contains(" pid "), "no holder: {seen}");
    // A line in the middle of the file: none of it counted as done, some of
    // its bytes copied, the total known, a rate and the time left.
    let mid = err
        .lines()
        .filter(|l| l.contains("migrating: 0/1 files, "))
        .find(|l| !l.contains("migrating: 0/1 files, 0 B/"))
        .unwrap_or_else(|| panic!("no progress line during the file:\n{err}"));
    assert!(mid.contains("/64.0 MiB, "), "{mid}");
    assert!(
        mid.contains("/s, about ") && mid.contains("s left"),
        "{mid}"
    );
    assert_eq!(fs::read(rig.mnt.join("data/model.bin")).unwrap(), big);
}
