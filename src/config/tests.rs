//! The config's unit tests: the schema, validation and overrides, row by row.

use super::*;
use crate::exit_code::ExitCode;

fn p(text: &str) -> Result<Config> {
    parse(text, Path::new("t.toml"), &Overrides::default())
}
fn err(text: &str) -> String {
    let e = p(text).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Config, "{e}");
    e.to_string()
}
const ROOTS: &str = "app_root = \"/app\"\nshare_root = \"/mnt/fileshare\"\n";

#[test]
fn spec_example_parses() {
    let c = p(r#"
app_root = "/app"
share_root = "/mnt/fileshare"
require_mount = true
mount_timeout = "30s"

[links]
"modelling/predictions" = "modelling/predictions"
"scraping/scraped_data" = "scraping/scraped_data"
"forecasting/data" = { share = "forecasting/data", dirs = ["input", "output"] }
"modelling/cache"  = { share = "modelling/cache", dirs = ["sarima_params", "time_moe_cache"], migrate = "merge" }

[run]
user = "app"
grace_period = "3s"
kill_process_group = false
"#)
    .unwrap();
    assert_eq!(c.app_root, Path::new("/app"));
    assert_eq!(c.mount_timeout, Duration::from_secs(30));
    assert_eq!(c.links.len(), 4);
    // File order, not key order.
    assert_eq!(c.links[0].app, Path::new("modelling/predictions"));
    assert_eq!(
        c.links[2].dirs,
        vec![PathBuf::from("input"), PathBuf::from("output")]
    );
    assert_eq!(c.links[3].migrate, MigrateMode::Merge);
    assert_eq!(c.links[0].migrate, MigrateMode::IfEmpty);
    assert_eq!(c.links[0].line, Some(8));
    assert_eq!(c.run.user.as_deref(), Some("app"));
    assert_eq!(
        c.share_path(&c.links[2]),
        Path::new("/mnt/fileshare/forecasting/data")
    );
}

#[test]
fn defaults() {
    let c = p(ROOTS).unwrap();
    assert!(c.require_mount);
    assert_eq!(c.mount_timeout, Duration::ZERO);
    assert_eq!(c.run, RunDefaults::default());
    assert!(c.links.is_empty());
}

#[test]
fn overrides_win() {
    let ov = Overrides {
        app_root: Some("/other".into()),
        share_root: None,
        require_mount: Some(false),
        parallelism: Some(7),
    };
    let c = parse(
        &format!("{ROOTS}[migration]\nparallelism = 3\n"),
        Path::new("t"),
        &ov,
    )
    .unwrap();
    assert_eq!(c.app_root, Path::new("/other"));
    assert!(!c.require_mount);
    assert_eq!(c.migration.parallelism, Some(7));
    // A root may come from the command line alone.
    let c = parse("share_root = \"/s\"", Path::new("t"), &ov).unwrap();
    assert_eq!(c.app_root, Path::new("/other"));
}

#[test]
fn unknown_keys_named_with_line() {
    let e = err(&format!("{ROOTS}colour = 1\n"));
    assert!(e.contains("colour") && e.contains("line 3"), "{e}");
    let e = err(&format!("{ROOTS}[links]\n\"a\" = {{ shar = \"a\" }}\n"));
    assert!(e.contains("shar") && e.contains("line 4"), "{e}");
    let e = err(&format!("{ROOTS}[run]\nusr = \"x\"\n"));
    assert!(e.contains("usr"), "{e}");
}

#[test]
fn roots_must_be_absolute_and_present() {
    assert!(err("share_root = \"/s\"").contains("app_root is missing"));
    let e = err("app_root = \"app\"\nshare_root = \"/s\"");
    assert!(
        e.contains("app_root") && e.contains("absolute") && e.contains("line 1"),
        "{e}"
    );
    let e = err("app_root = \"/app\"\nshare_root = \"/s/../x\"");
    assert!(e.contains("share_root") && e.contains(".."), "{e}");
}

#[test]
fn bad_link_paths() {
    for (k, v, what) in [
        ("", "x", "empty"),
        ("/abs", "x", "relative"),
        ("a/../b", "x", ".."),
        ("./a", "x", "'.'"),
        ("a", "", "empty"),
        ("a", "/abs", "relative"),
        ("a", "x/..", ".."),
        ("a", ".sharelink/x", "reserved"),
        ("a", ".data.sharelink-staging", "sharelink's own"),
        ("a", "x/.data.sharelink-staging/y", "sharelink's own"),
        ("m/.data.sharelink-committed", "x", "sharelink's own"),
    ] {
        let e = err(&format!("{ROOTS}[links]\n{k:?} = {v:?}\n"));
        assert!(e.contains(what) && e.contains("line 4"), "{k} {v}: {e}");
    }
    let e = err(&format!(
        "{ROOTS}[links]\n\"a\" = {{ share = \"a\", dirs = [\"../x\"] }}\n"
    ));
    assert!(e.contains("dirs") && e.contains(".."), "{e}");
    let e = err(&format!(
        "{ROOTS}[links]\n\"a\" = {{ share = \"a\", dirs = [\"/x\"] }}\n"
    ));
    assert!(e.contains("dirs"), "{e}");
}

#[test]
fn trailing_and_double_slashes_normalise() {
    let c = p(&format!("{ROOTS}[links]\n\"a//b/\" = \"x/y/\"\n")).unwrap();
    assert_eq!(c.links[0].app, Path::new("a/b"));
    assert_eq!(c.links[0].share, Path::new("x/y"));
}

#[test]
fn overlaps_rejected() {
    for (a, b) in [
        ("\"a\" = \"x\"\n\"a/b\" = \"y\"", "app"),
        ("\"a\" = \"x\"\n\"b\" = \"x/y\"", "share"),
        ("\"a\" = \"x\"\n\"b\" = \"x\"", "share"),
        ("\"a\" = \"x\"\n\"a//\" = \"y\"", ""),
    ] {
        let text = format!("{ROOTS}[links]\n{a}\n");
        let e = p(&text).unwrap_err().to_string();
        assert!(e.contains("overlap") || e.contains("duplicate"), "{a}: {e}");
        assert!(e.contains(b), "{a}: {e}");
    }
    // Siblings with a common name prefix do not overlap.
    p(&format!(
        "{ROOTS}[links]\n\"ab\" = \"xy\"\n\"a\" = \"x\"\n\"a-b\" = \"x-y\"\n"
    ))
    .unwrap();
    // A share target inside an app link.
    let e = err("app_root = \"/app\"\nshare_root = \"/app/share\"\n[links]\n\"share\" = \"x\"\n");
    assert!(e.contains("overlap"), "{e}");
}

#[test]
fn migrate_values() {
    let e = err(&format!(
        "{ROOTS}[links]\n\"a\" = {{ share = \"a\", migrate = \"always\" }}\n"
    ));
    assert!(e.contains("always") && e.contains("line 4"), "{e}");
}

#[test]
fn image_wins_and_keep() {
    let c = p(&format!(
        "{ROOTS}[displaced]\nkeep = \"30d\"\n[links]\n\"a\" = {{ share = \"a\", migrate = \"image-wins\", keep = 5 }}\n\"b\" = \"b\"\n"
    ))
    .unwrap();
    assert_eq!(c.links[0].migrate, MigrateMode::ImageWins);
    assert_eq!(c.links[0].migrate.to_string(), "image-wins");
    // The link's own setting wins over `[displaced] keep`.
    assert_eq!(c.links[0].keep, Some(Keep::Count(5)));
    assert_eq!(
        c.links[1].keep,
        Some(Keep::Age(Duration::from_secs(30 * 86400)))
    );
    assert_eq!(p(ROOTS).unwrap().links.len(), 0);
    let c = p(&format!("{ROOTS}[links]\n\"a\" = \"a\"\n")).unwrap();
    assert_eq!(c.links[0].keep, None, "keeps everything by default");
    // Shown as it would be written.
    for (k, shown) in [
        (Keep::Count(5), "5"),
        (Keep::Age(Duration::from_secs(30 * 86400)), "30d"),
        (Keep::Age(Duration::from_secs(36 * 3600)), "36h"),
        (Keep::Age(Duration::from_secs(90 * 60)), "90m"),
        (Keep::Age(Duration::from_secs(61)), "61s"),
        (Keep::Age(Duration::from_millis(1500)), "1500ms"),
    ] {
        assert_eq!(k.to_string(), shown);
    }
    for (table, culprit) in [
        ("keep = 0", "at least 1"),
        ("keep = -3", "at least 1"),
        ("keep = \"0d\"", "every set-aside copy"),
        ("keep = \"soon\"", "bad duration"),
        ("keep = \"400d\"", "too long"),
        ("keep = true", "a count of set-aside copies"),
    ] {
        let e = err(&format!(
            "{ROOTS}[links]\n\"a\" = {{ share = \"a\", {table} }}\n"
        ));
        assert!(
            e.contains("line 4")
                && e.contains(culprit)
                && (e.contains("keep") || table.contains("true")),
            "{table}: {e}"
        );
        if !table.contains("true") {
            assert!(e.contains("links.\"a\".keep"), "{table}: {e}");
        }
        let e = err(&format!("{ROOTS}\n[displaced]\n{table}\n"));
        assert!(e.contains("line 5") && e.contains(culprit), "{table}: {e}");
        if !table.contains("true") {
            assert!(e.contains("displaced.keep"), "{table}: {e}");
        }
    }
    let e = err(&format!("{ROOTS}[displaced]\nkeeep = 3\n"));
    assert!(e.contains("keeep") && e.contains("line 4"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
    assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
    assert!(parse_duration("366d").unwrap_err().contains("too long"));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
    for long in ["8761h", "18446744073709551615s", "5124095576030431h"] {
        assert!(
            parse_duration(long).unwrap_err().contains("too long"),
            "{long}"
        );
    }
    for bad in [
        "",
        "3",
        "s",
        "-1s",
        "1.5s",
        "3 sec",
        "3 s",
        "500 ms",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    // Surrounding spaces are trimmed; a space inside is refused (78).
    assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
    let e = err(&format!("{ROOTS}[run]\ngrace_period = \"3 s\"\n"));
    assert!(
        e.contains("run.grace_period") && e.contains("\"3 s\""),
        "{e}"
    );
    let e = err(&format!("{ROOTS}mount_timeout = \"soon\"\n"));
    assert!(e.contains("mount_timeout") && e.contains("line 3"), "{e}");
    let e = err(&format!("{ROOTS}[run]\ngrace_period = \"3\"\n"));
    assert!(
        e.contains("run.grace_period") && e.contains("line 4"),
        "{e}"
    );
}

#[test]
fn rewrite_table() {
    let c = p(&format!(
        "{ROOTS}[run]\nrewrite = {{ TERM = \"INT\", sighup = 0, 10 = \"SIGUSR2\" }}\n"
    ))
    .unwrap();
    let never = || None;
    assert_eq!(
        c.run.rewrite.apply(libc::SIGTERM, never),
        Some(libc::SIGINT)
    );
    assert_eq!(c.run.rewrite.apply(libc::SIGHUP, never), None);
    assert_eq!(
        c.run.rewrite.apply(libc::SIGUSR1, never),
        Some(libc::SIGUSR2)
    );
    let c = p(&format!(
        "{ROOTS}[run]\nrewrite = {{ TERM = \"INT-if-uncaught\" }}\n"
    ))
    .unwrap();
    assert!(c.run.rewrite.is_conditional());
    for (table, culprit) in [
        ("{ TERM = \"BOGUS\" }", "run.rewrite.TERM"),
        ("{ BOGUS = \"INT\" }", "run.rewrite.BOGUS"),
        ("{ KILL = \"INT\" }", "SIGKILL"),
        ("{ STOP = \"INT\" }", "SIGSTOP"),
        ("{ TERM = 99 }", "99"),
        ("{ TERM = true }", "line 4"),
    ] {
        let e = err(&format!("{ROOTS}[run]\nrewrite = {table}\n"));
        assert!(e.contains(culprit) && e.contains("line 4"), "{table}: {e}");
    }
}

#[test]
fn wrong_types_named() {
    let e = err(&format!("{ROOTS}require_mount = \"yes\"\n"));
    assert!(e.contains("require_mount") || e.contains("line 3"), "{e}");
    let e = err(&format!("{ROOTS}[links]\n\"a\" = 3\n"));
    assert!(e.contains("line 4"), "{e}");
}

#[test]
fn parallelism_is_bounded_and_paths_must_fit() {
    let e = err(&format!("{ROOTS}[migration]\nparallelism = 0\n"));
    assert!(
        e.contains("line 4") && e.contains("migration.parallelism"),
        "{e}"
    );
    let c = p(&format!("{ROOTS}[migration]\nparallelism = 64\n")).unwrap();
    assert_eq!(c.migration.threads(Path::new("/")), 64);
    let long = "d/".repeat(2100);
    let e = err(&format!("{ROOTS}[links]\n\"{long}x\" = \"s\"\n"));
    assert!(
        e.contains("the app path") && e.contains("at most 4095"),
        "{e}"
    );
    let name = "n".repeat(256);
    let e = err(&format!("{ROOTS}[links]\n\"a\" = \"{name}\"\n"));
    assert!(
        e.contains("share path") && e.contains("256-byte name"),
        "{e}"
    );
}
