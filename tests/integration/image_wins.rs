//! `migrate = "image-wins"` and `keep`: a second image version on an
//! existing share puts its bytes in the share target and keeps the share's
//! previous ones under `displaced/`; `keep` removes only old complete
//! set-aside copies, through directory descriptors, never following a
//! symlink the share holds.

use crate::support::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LINK: &str = "\"data\" = { share = \"data\", migrate = \"image-wins\" }";

/// Files of `dir` (relative path -> bytes), directories left out.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    walk_names(dir, &mut |p, _| {
        if fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
            v.push((
                p.strip_prefix(dir).unwrap().to_path_buf(),
                fs::read(p).unwrap(),
            ));
        }
    });
    v.sort();
    v
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// The image's version of the data baked at `app/data`; sharelink trusts
/// timestamps only once they are a moment old.
fn bake(sb: &Sandbox, files: &[(&str, &str)]) {
    for (rel, text) in files {
        write(&sb.app.join("data"), rel, text);
    }
    std::thread::sleep(Duration::from_millis(150));
}

/// A set-aside stamp for a time `days` ago.
fn stamp_days_ago(days: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - days * 86400;
    let secs = t as i64;
    // The same calendar arithmetic as the binary's stamps, by `date`.
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y%m%dT%H%M%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Version 1 of the image ran, the pipeline used the share; version 2 of
/// the image changed reference files, added one, and kept one the same.
fn second_version(sb: &Sandbox) {
    let share = sb.share.join("data");
    write(&share, "ref/rates.csv", "v1 rates");
    write(&share, "ref/same.csv", "same in both");
    write(&share, "model.json", "v1 model");
    write(&share, "output/result.csv", "written by the pipeline");
    // The share has a directory where the new image has a file.
    write(&share, "clash/inside", "share's tree");
    bake(
        sb,
        &[
            ("ref/rates.csv", "v2 rates"),
            ("ref/same.csv", "same in both"),
            ("ref/new.csv", "only in v2"),
            ("model.json", "v2 model"),
            ("clash", "a file in v2"),
        ],
    );
}

#[test]
fn second_image_version_replaces_share_data_and_keeps_the_old() {
    let sb = Sandbox::new(LINK);
    second_version(&sb);
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let share = sb.share.join("data");
    assert_eq!(fs::read_link(sb.app.join("data")).unwrap(), share);
    assert_eq!(
        files(&share),
        [
            (PathBuf::from("clash/inside"), b"share's tree".to_vec()),
            ("model.json".into(), b"v2 model".to_vec()),
            (
                "output/result.csv".into(),
                b"written by the pipeline".to_vec()
            ),
            ("ref/new.csv".into(), b"only in v2".to_vec()),
            ("ref/rates.csv".into(), b"v2 rates".to_vec()),
            ("ref/same.csv".into(), b"same in both".to_vec()),
        ]
    );
    // The share's previous versions, and the app file the share's
    // directory kept out, are set aside: nothing is lost.
    let mut kept = Vec::new();
    for st in displaced(&sb.share, "data") {
        kept.extend(files(&st));
    }
    kept.sort();
    assert_eq!(
        kept,
        [
            (PathBuf::from("clash"), b"a file in v2".to_vec()),
            ("model.json".into(), b"v1 model".to_vec()),
            ("ref/rates.csv".into(), b"v1 rates".to_vec()),
        ]
    );
    let err = stderr(&o);
    assert!(
        err.contains("image-wins") && err.contains("replaced"),
        "{err}"
    );
    assert!(leftovers(&sb.app, &sb.share).is_empty());
    expect_code(&sb.run(["status"]), 0);

    // Another container of the same image version: its data is what the
    // share holds now, so nothing more is set aside.
    fs::remove_file(sb.app.join("data")).unwrap();
    bake(
        &sb,
        &[
            ("ref/rates.csv", "v2 rates"),
            ("ref/same.csv", "same in both"),
            ("model.json", "v2 model"),
        ],
    );
    let before = displaced(&sb.share, "data");
    expect_code(&sb.run(["link"]), 0);
    assert_eq!(displaced(&sb.share, "data"), before);
    assert_eq!(fs::read(share.join("model.json")).unwrap(), b"v2 model");
}

#[test]
fn image_directory_replaces_a_share_file_and_symlinks_are_replaced_not_followed() {
    let sb = Sandbox::new(LINK);
    let share = sb.share.join("data");
    write(&share, "tables", "a file on the share");
    let outside = sb.path("outside");
    fs::write(&outside, "must stay").unwrap();
    std::os::unix::fs::symlink(&outside, share.join("pointer")).unwrap();
    bake(
        &sb,
        &[
            ("tables/a.csv", "a"),
            ("tables/b/c.csv", "c"),
            ("pointer", "a file in the image"),
        ],
    );
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    assert_eq!(fs::read(share.join("tables/b/c.csv")).unwrap(), b"c");
    assert_eq!(
        fs::read(share.join("pointer")).unwrap(),
        b"a file in the image"
    );
    assert!(!lmeta(&share.join("pointer")).file_type().is_symlink());
    assert_eq!(fs::read(&outside).unwrap(), b"must stay");
    let st = &displaced(&sb.share, "data")[0];
    assert_eq!(fs::read(st.join("tables")).unwrap(), b"a file on the share");
    assert_eq!(fs::read_link(st.join("pointer")).unwrap(), outside);
}

/// A directory in the image over a file on the share: a co-tenant that
/// puts its own file at that name after sharelink checked the share's
/// version (stopped there) keeps it; sharelink replaces only the version
/// it kept, and links once that one is gone.
#[test]
fn image_directory_never_removes_a_share_file_swapped_in_after_the_check() {
    if !crate::support::api::FAILPOINTS_ENABLED {
        panic!("build with --features failpoints (the documented test command)");
    }
    let sb = Sandbox::new(LINK);
    let share = sb.share.join("data");
    write(&share, "tables", "a file on the share");
    bake(&sb, &[("tables/a.csv", "a")]);
    let child = sb
        .cmd()
        .arg("link")
        .env("SHARELINK_FAILPOINT", "replace.checked:1:stop")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id(), Duration::from_secs(30));
    // The co-tenant's file takes the name (a rename over it, as an
    // atomic writer does).
    write(&sb.share, "cotenant.tmp", "the co-tenant's file");
    fs::rename(sb.share.join("cotenant.tmp"), share.join("tables")).unwrap();
    sh(&format!("kill -CONT {}", child.id()));
    let o = child.wait_with_output().unwrap();
    assert!(matches!(code(&o), 0 | 74), "{}", stderr(&o));
    let everywhere = |want: &[u8]| {
        files(&share).iter().any(|(_, b)| b == want)
            || displaced(&sb.share, "data")
                .iter()
                .any(|st| files(st).iter().any(|(_, b)| b == want))
    };
    assert!(everywhere(b"the co-tenant's file"), "{}", stderr(&o));
    assert!(everywhere(b"a file on the share"), "{}", stderr(&o));
    // Runs go on until linked, and nothing is lost on the way.
    for _ in 0..3 {
        if code(&sb.run(["link"])) == 0 {
            break;
        }
    }
    assert!(everywhere(b"the co-tenant's file"));
    assert!(everywhere(b"a file on the share"));
    assert!(everywhere(b"a"));
}

#[test]
fn if_empty_still_keeps_the_share_version() {
    // The default is unchanged: the share wins, the image's version is
    // set aside.
    let sb = Sandbox::new("\"data\" = \"data\"");
    second_version(&sb);
    expect_code(&sb.run(["link"]), 0);
    let share = sb.share.join("data");
    assert_eq!(fs::read(share.join("model.json")).unwrap(), b"v1 model");
}

#[test]
fn keep_by_count_removes_only_older_complete_stamps() {
    let sb = Sandbox::new(LINK);
    sb.write_config_with(false, "[displaced]\nkeep = 3", LINK);
    let base = sb.share.join(".sharelink/displaced/data");
    let old: Vec<String> = [50, 40, 30].iter().map(|&d| stamp_days_ago(d)).collect();
    for s in &old {
        write(&base, &format!("{s}/model.json"), s);
    }
    // Not sharelink's stamps: never touched.
    write(&base, "notes/readme", "by hand");
    second_version(&sb);
    let o = sb.run(["link"]);
    expect_code(&o, 0);
    let left = names(&base);
    // This run's two stamps (the share's versions; the app file the
    // share's directory kept out), the newest older one, and `notes`.
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(
        left.contains(&old[2]) && left.contains(&"notes".to_string()),
        "{left:?}"
    );
    assert!(
        !left.contains(&old[0]) && !left.contains(&old[1]),
        "{left:?}"
    );
    assert!(
        left.iter()
            .any(|s| fs::read(base.join(s).join("model.json")).is_ok_and(|b| b == b"v1 model")),
        "{left:?}"
    );
    assert!(
        stderr(&o).contains("removed set-aside copies"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn keep_by_age_removes_only_older_stamps_and_never_follows_symlinks() {
    let sb = Sandbox::new(LINK);
    sb.write_config(
        false,
        "\"data\" = { share = \"data\", migrate = \"image-wins\", keep = \"30d\" }",
    );
    let base = sb.share.join(".sharelink/displaced/data");
    let (young, old) = (stamp_days_ago(10), stamp_days_ago(40));
    write(&base, &format!("{young}/f"), "young");
    write(&base, &format!("{old}/f"), "old");
    // A symlink named like an old stamp, into a directory outside.
    let outside = sb.path("outside");
    write(&outside, "precious", "must stay");
    let fake = stamp_days_ago(45);
    std::os::unix::fs::symlink(&outside, base.join(&fake)).unwrap();
    second_version(&sb);
    expect_code(&sb.run(["link"]), 0);
    let left = names(&base);
    assert!(left.contains(&young) && !left.contains(&old), "{left:?}");
    assert!(lmeta(&base.join(&fake)).file_type().is_symlink());
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"must stay");
    // This run's own stamp holds the share's previous version.
    assert!(
        left.iter()
            .any(|s| fs::read(base.join(s).join("model.json")).is_ok_and(|b| b == b"v1 model")),
        "{left:?}"
    );
}

#[test]
fn dry_run_status_and_check_show_the_policy() {
    let sb = Sandbox::new(LINK);
    sb.write_config(
        false,
        "\"data\" = { share = \"data\", migrate = \"image-wins\", keep = 5 }",
    );
    second_version(&sb);
    let o = sb.run(["link", "--dry-run"]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("image-wins") && out.contains("replace") && out.contains("the 5 most recent"),
        "{out}"
    );
    // What it would replace and set aside, by name.
    assert!(
        out.contains("would replace 2 share entries")
            && out.contains("model.json")
            && out.contains("ref/rates.csv")
            && out.contains("copy in 1: ref/new.csv")
            && out.contains("set aside 1 app entry where the share has a directory: clash")
            && out.contains("1 already identical"),
        "{out}"
    );
    let o = sb.run(["status"]);
    expect_code(&o, 1);
    let out = stdout(&o);
    assert!(
        out.contains("needs-migration") && out.contains("image-wins") && out.contains("keep = 5"),
        "{out}"
    );
    let o = sb.run(["check"]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("image-wins") && out.contains("5"), "{out}");
    // Nothing changed.
    assert!(!sb.share.join(".sharelink/displaced").exists());
}

#[test]
fn bad_keep_values_exit_78_naming_key_and_line() {
    let sb = Sandbox::new(LINK);
    for (extra, links, key) in [
        (
            "",
            "\"data\" = { share = \"data\", keep = 0 }",
            "links.\"data\".keep",
        ),
        (
            "",
            "\"data\" = { share = \"data\", keep = \"30 days\" }",
            "links.\"data\".keep",
        ),
        ("[displaced]\nkeep = \"0d\"", LINK, "displaced.keep"),
        (
            "",
            "\"data\" = { share = \"data\", migrate = \"image_wins\" }",
            "image_wins",
        ),
    ] {
        sb.write_config_with(false, extra, links);
        let o = sb.run(["check"]);
        expect_code(&o, 78);
        let err = stderr(&o);
        assert!(
            err.contains(key) && err.contains("line"),
            "{extra} {links}: {err}"
        );
    }
}
