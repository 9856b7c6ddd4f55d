//! What `status` and `link --dry-run` report, and that they write nothing.

use crate::support::*;

use std::fs;

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
