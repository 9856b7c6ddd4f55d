//! Config checking: `check` names the key and line of what is wrong, and
//! every command refuses a bad config before touching anything.

use crate::support::*;

use std::fs;

#[test]
fn check_accepts_good_config_and_names_key_and_line_of_bad_one() {
    let sb = Sandbox::new("\"a\" = \"a\"");
    let o = sb.run(["check"]);
    expect_code(&o, 0);
    let bad = [
        (
            "\"a\" = \"a\"\n\"b\" = { share = \"b\", migrate = \"always\" }",
            "migrate",
            7,
        ),
        ("\"a\" = \"a\"\n\"a/b\" = \"x\"", "a/b", 7),
        ("\"a\" = \"../up\"", "share", 6),
        ("\"a\" = { share = \"a\", colour = \"red\" }", "colour", 6),
        ("\"a\" = \".sharelink/x\"", ".sharelink", 6),
    ];
    for (links, key, line) in bad {
        sb.write_config(false, links);
        let o = sb.run(["check"]);
        expect_code(&o, 78);
        let err = stderr(&o);
        assert!(err.contains(key), "{links}: key {key} not named: {err}");
        assert!(
            err.contains(&format!("line {line}")),
            "{links}: line {line} not named: {err}"
        );
        // link refuses too, before touching anything.
        expect_code(&sb.run(["link"]), 78);
    }
    let o = std::process::Command::new(bin())
        .default_signals()
        .arg("--config")
        .arg(sb.root.path().join("nope.toml"))
        .arg("check")
        .output()
        .unwrap();
    expect_code(&o, 78);
    assert!(snapshot(&sb.share).is_empty() && snapshot(&sb.app).is_empty());
}

#[test]
fn traversal_and_overlapping_configs_are_rejected_naming_the_key() {
    let roots = |app: &str, share: &str| {
        format!("app_root = {app:?}\nshare_root = {share:?}\nrequire_mount = false\n")
    };
    let b = Sandbox::new("");
    let (app, share) = (b.app.display().to_string(), b.share.display().to_string());
    let ok_roots = roots(&app, &share);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{ok_roots}[links]\n\"../escape\" = \"x\"\n"),
            vec!["links.\"../escape\"", "line 5"],
        ),
        (
            format!("{ok_roots}[links]\n\"a/../../b\" = \"x\"\n"),
            vec!["links.\"a/../../b\""],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \"../../etc\"\n"),
            vec!["links.\"a\".share", ".."],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \"/etc\"\n"),
            vec!["links.\"a\".share", "relative"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = {{ share = \"a\", dirs = [\"../../x\"] }}\n"),
            vec!["links.\"a\".dirs"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = {{ share = \"a\", dirs = [\"/tmp\"] }}\n"),
            vec!["links.\"a\".dirs"],
        ),
        (
            format!("{ok_roots}[links]\n\"a/./b\" = \"x\"\n"),
            vec!["links.\"a/./b\""],
        ),
        (
            format!("{ok_roots}[links]\n\".\" = \"x\"\n"),
            vec!["links.\".\""],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \".\"\n"),
            vec!["links.\"a\".share"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \"\"\n"),
            vec!["links.\"a\".share", "empty"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \"x\"\n\"a/b\" = \"y\"\n"),
            vec!["links.\"a\"", "links.\"a/b\"", "app side"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \"x\"\n\"b\" = \"x/y\"\n"),
            vec!["links.\"a\"", "links.\"b\"", "share side"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \"x\"\n\"b\" = \"x\"\n"),
            vec!["links.\"a\"", "links.\"b\"", "share side"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \"x\"\n\"a/\" = \"y\"\n"),
            vec!["links.\"a\"", "app side"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = \".sharelink/locks\"\n"),
            vec!["links.\"a\".share", "reserved"],
        ),
        (
            format!("{ok_roots}[links]\n\"a\" = {{ share = \"a\", migrate = \"overwrite\" }}\n"),
            vec!["migrate", "overwrite"],
        ),
        (
            format!("{ok_roots}mount_timeout = \"soon\"\n"),
            vec!["mount_timeout"],
        ),
        (
            format!("{ok_roots}[run]\ngrace_period = \"-1s\"\n"),
            vec!["grace_period"],
        ),
        (format!("{ok_roots}linkz = 1\n"), vec!["linkz"]),
        (roots("relative/app", &share), vec!["app_root", "absolute"]),
        (roots(&app, "/srv/../etc"), vec!["share_root", ".."]),
        (
            format!("share_root = {share:?}\n"),
            vec!["app_root", "missing"],
        ),
        // The share inside the app directory being linked, and the reverse.
        (
            format!(
                "{}[links]\n\"data\" = \"x\"\n",
                roots(&app, &format!("{app}/data"))
            ),
            vec!["links.\"data\"", "overlap"],
        ),
        (
            format!(
                "{}[links]\n\"s/x\" = \"y\"\n",
                roots(&format!("{share}/y"), &share)
            ),
            vec!["links.\"s/x\"", "overlap"],
        ),
    ];
    let app_before = snapshot(&b.app);
    for (text, want) in &cases {
        fs::write(&b.config, text).unwrap();
        for cmd in ["check", "link", "status"] {
            let o = sharelink(&b.config).arg(cmd).output().unwrap();
            expect_code(&o, 78);
            let e = stderr(&o);
            for w in want {
                assert!(e.contains(w), "{cmd} with\n{text}\nshould name {w:?}: {e}");
            }
        }
        assert!(names(&b.share).is_empty(), "touched the share for\n{text}");
        assert_eq!(snapshot(&b.app), app_before);
    }
    report(&format!(
        "hostile config: {} traversal/overlap/invalid configs x check, link, status: exit 78 naming the key every time, nothing touched",
        cases.len()
    ));
}

/// `check` gates a deploy: a `run.user` the image does not have fails it
/// (78, naming the user) as it fails `run` and `link`; a known one passes.
#[test]
fn check_refuses_an_unknown_run_user_like_run_and_link() {
    let sb = Sandbox::new("\"a\" = \"a\"");
    sb.write_config_with(
        false,
        "[run]\nuser = \"sharelink-no-such-user\"",
        "\"a\" = \"a\"",
    );
    for cmd in [&["check"][..], &["link"], &["run", "--", "true"]] {
        let o = sb.run(cmd);
        expect_code(&o, 78);
        assert!(
            stderr(&o).contains("sharelink-no-such-user"),
            "{cmd:?}: {}",
            stderr(&o)
        );
    }
    assert!(!sb.app.join("a").exists(), "link went ahead");
    sb.write_config_with(false, "[run]\nuser = \"root\"", "\"a\" = \"a\"");
    expect_code(&sb.run(["check"]), 0);
}
