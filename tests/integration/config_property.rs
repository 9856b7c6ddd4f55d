//! Fuzzing config parsing and validation (proptest; CI runs this). The
//! coverage-guided twin is fuzz/fuzz_targets/config.rs (`cargo +nightly
//! fuzz run config`).
//!
//! The rules a config must satisfy, written here independently of
//! src/config.rs: both roots absolute without `..`; every app path, share
//! path and `dirs` entry relative, non-empty, of plain components only; no
//! share path under `.sharelink` (sharelink's own area); no app path and
//! share target inside one another; no two links' app paths, nor their
//! share paths, inside one another.
//!
//! Three generators:
//! - arbitrary text, and TOML-ish text assembled from the schema's keys and
//!   hostile values: `parse` never panics, every error is exit 78, and
//!   every accepted config satisfies the rules;
//! - structured configs (links over a tiny alphabet so that overlaps,
//!   traversal and reserved paths are common), rendered as valid TOML:
//!   `parse` accepts exactly when the independent implementation of the
//!   rules does (a differential oracle), and keeps the paths it was given.
//!
//! `PROPTEST_CASES` scales every property (CI uses the defaults below).

use std::path::{Component, Path, PathBuf};

use crate::support::api::{config, Overrides};
use proptest::prelude::*;

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Whatever `parse` says about `text`, it says it without panicking, and a
/// rejection is exit 78 naming a config; an acceptance obeys the rules.
fn check_any(text: &str, ov: &Overrides) -> Result<bool, TestCaseError> {
    let accepted = match config::parse(text, Path::new("fuzz.toml"), ov) {
        Err(e) => {
            prop_assert_eq!(e.exit_code().code(), 78, "{}", e);
            prop_assert!(e.to_string().contains("fuzz.toml"), "{}", e);
            false
        }
        Ok(cfg) => {
            let rules = config_rules(
                &cfg.app_root,
                &cfg.share_root,
                &cfg.links
                    .iter()
                    .map(|l| (l.app.clone(), l.share.clone(), l.dirs.clone()))
                    .collect::<Vec<_>>(),
            );
            prop_assert!(
                rules.is_ok(),
                "accepted a config the rules reject: {:?}\n{}",
                rules,
                text
            );
            true
        }
    };
    Ok(accepted)
}

/// The rules (module docs) on already-parsed paths.
fn config_rules(
    app_root: &Path,
    share_root: &Path,
    links: &[(PathBuf, PathBuf, Vec<PathBuf>)],
) -> Result<(), String> {
    let clean_abs =
        |p: &Path| p.is_absolute() && !p.components().any(|c| c == Component::ParentDir);
    if !clean_abs(app_root) || !clean_abs(share_root) {
        return Err("root not absolute or has ..".into());
    }
    let clean_rel = |p: &Path| {
        !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
    };
    for (a, s, dirs) in links {
        if !clean_rel(a) || !clean_rel(s) || !dirs.iter().all(|d| clean_rel(d)) {
            return Err(format!("bad relative path in {a:?} {s:?} {dirs:?}"));
        }
        if s.components().next() == Some(Component::Normal(".sharelink".as_ref())) {
            return Err(format!("{s:?} under .sharelink"));
        }
        let (aa, ss) = (app_root.join(a), share_root.join(s));
        if aa.starts_with(&ss) || ss.starts_with(&aa) {
            return Err(format!("{aa:?} and {ss:?} overlap"));
        }
    }
    for (i, x) in links.iter().enumerate() {
        for y in &links[i + 1..] {
            if x.0.starts_with(&y.0) || y.0.starts_with(&x.0) {
                return Err(format!("app {:?} {:?} overlap", x.0, y.0));
            }
            if x.1.starts_with(&y.1) || y.1.starts_with(&x.1) {
                return Err(format!("share {:?} {:?} overlap", x.1, y.1));
            }
        }
    }
    Ok(())
}

/// Hostile and ordinary values for string keys.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".into()),
        Just("..".into()),
        Just("/".into()),
        Just("a/../../etc".into()),
        Just("/abs/path".into()),
        Just("a//b/".into()),
        Just(".sharelink/x".into()),
        Just("3s".into()),
        Just("500ms".into()),
        Just("99999999999999999999h".into()),
        Just("18446744073709551615m".into()),
        Just("-1s".into()),
        Just("1.5s".into()),
        Just("if-empty".into()),
        Just("merge".into()),
        Just("app:app".into()),
        Just("\\u0000".into()),
        Just("\\uD800".into()),
        Just("\\n".into()),
        "[a-c./]{0,8}",
        "/[a-c./]{0,8}",
        "\\PC{0,12}",
    ]
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => value().prop_map(|v| format!("\"{v}\"")),
        1 => value().prop_map(|v| format!("'{v}'")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => prop::collection::vec(value(), 0..4).prop_map(|v| format!("[{}]", v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "))),
        2 => (value(), prop::collection::vec(value(), 0..3), value()).prop_map(|(s, d, m)| {
            format!("{{ share = \"{s}\", dirs = [{}], migrate = \"{m}\" }}", d.iter().map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(", "))
        }),
        1 => value().prop_map(|s| format!("{{ share = \"{s}\" }}")),
        1 => Just("{ shar = \"x\" }".to_string()),
        1 => Just("{".to_string()),
        1 => Just("\"unterminated".to_string()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("app_root".to_string()),
        Just("share_root".to_string()),
        Just("require_mount".to_string()),
        Just("mount_timeout".to_string()),
        Just("user".to_string()),
        Just("grace_period".to_string()),
        Just("kill_process_group".to_string()),
        Just("share".to_string()),
        Just("dirs".to_string()),
        Just("migrate".to_string()),
        Just("unknown_key".to_string()),
        value().prop_map(|v| format!("\"{v}\"")),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => Just("[links]".to_string()),
        1 => Just("[run]".to_string()),
        1 => Just("[links.sub]".to_string()),
        1 => Just("[[links]]".to_string()),
        1 => Just("# comment".to_string()),
        1 => Just(String::new()),
        1 => "\\PC{0,20}",
    ]
}

fn toml_ish() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(line(), 0..14)).prop_map(|(roots, lines)| {
        let mut s = String::new();
        if roots {
            s.push_str("app_root = \"/app\"\nshare_root = \"/mnt/share\"\n");
        }
        s.push_str(&lines.join("\n"));
        s
    })
}

fn overrides() -> impl Strategy<Value = Overrides> {
    (
        prop::option::of(value()),
        prop::option::of(value()),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(a, s, r)| Overrides {
            app_root: a.map(PathBuf::from),
            share_root: s.map(PathBuf::from),
            require_mount: r,
            parallelism: None,
        })
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}", ov in overrides()) {
        check_any(&text, &ov)?;
    }

    #[test]
    fn arbitrary_bytes_as_lossy_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_any(&String::from_utf8_lossy(&bytes), &Overrides::default())?;
    }


    #[test]
    fn durations_never_panic(s in "\\PC{0,12}", n in prop_oneof![0u64..100_000_000, any::<u64>()], unit in prop::sample::select(vec!["ms", "s", "m", "h", "", "d", " s"])) {
        let _ = config::parse_duration(&s);
        let text = format!("{n}{unit}");
        // Accepted exactly when the unit is known, the value fits, and it
        // is at most the longest duration allowed.
        // No space between number and unit: "3 s" is refused.
        let want = match unit {
            "ms" => Some(std::time::Duration::from_millis(n)),
            "s" => Some(std::time::Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(std::time::Duration::from_secs),
            "h" => n.checked_mul(3600).map(std::time::Duration::from_secs),
            "" if n == 0 => Some(std::time::Duration::ZERO),
            _ => None,
        }
        .filter(|d| *d <= config::MAX_DURATION);
        prop_assert_eq!(config::parse_duration(&text).ok(), want, "{}", text);
    }
}

/// A link path over a tiny alphabet: overlaps, `.`/`..`, empty segments and
/// the reserved `.sharelink` come up often.
fn rel() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
            1 => Just(".".to_string()),
            1 => Just("..".to_string()),
            1 => Just(String::new()),
            1 => Just(".sharelink".to_string()),
            1 => Just("é x".to_string()),
        ],
        1..4,
    )
    .prop_map(|v| v.join("/"))
}

#[derive(Debug, Clone)]
struct Spec {
    app_root: String,
    share_root: String,
    links: Vec<(String, String, Vec<String>)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let root = prop_oneof![
        4 => Just("/app".to_string()),
        4 => Just("/mnt/share".to_string()),
        1 => Just("/".to_string()),
        1 => Just("/app/a".to_string()),
        1 => Just("/mnt/share/a".to_string()),
        1 => Just("relative".to_string()),
        1 => Just("/x/../y".to_string()),
    ];
    (
        root.clone(),
        root,
        prop::collection::vec((rel(), rel(), prop::collection::vec(rel(), 0..3)), 0..5),
    )
        .prop_map(|(app_root, share_root, links)| Spec {
            app_root,
            share_root,
            links,
        })
}

/// What the rules say about the raw strings.
fn oracle(s: &Spec) -> Result<Vec<(PathBuf, PathBuf, Vec<PathBuf>)>, String> {
    let root = |r: &str| -> Result<PathBuf, String> {
        let p = Path::new(r);
        if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
            return Err(format!("root {r:?}"));
        }
        Ok(p.components().collect())
    };
    let rel = |r: &str| -> Result<PathBuf, String> {
        if r.is_empty() || r.starts_with('/') {
            return Err(format!("rel {r:?}"));
        }
        let mut out = PathBuf::new();
        for part in r.split('/') {
            match part {
                "" => {}
                "." | ".." => return Err(format!("rel {r:?}")),
                p => out.push(p),
            }
        }
        if out.as_os_str().is_empty() {
            return Err(format!("rel {r:?}"));
        }
        Ok(out)
    };
    let (app_root, share_root) = (root(&s.app_root)?, root(&s.share_root)?);
    let mut links = Vec::new();
    for (a, sh, dirs) in &s.links {
        let dirs = dirs.iter().map(|d| rel(d)).collect::<Result<Vec<_>, _>>()?;
        links.push((rel(a)?, rel(sh)?, dirs));
    }
    config_rules(&app_root, &share_root, &links)?;
    Ok(links)
}

fn render(s: &Spec) -> String {
    let q = |v: &str| toml_string(v);
    let mut t = format!(
        "app_root = {}\nshare_root = {}\n[links]\n",
        q(&s.app_root),
        q(&s.share_root)
    );
    for (i, (a, sh, dirs)) in s.links.iter().enumerate() {
        if i % 2 == 0 {
            t.push_str(&format!("{} = {}\n", q(a), q(sh)));
        } else {
            let d: Vec<String> = dirs.iter().map(|x| q(x)).collect();
            t.push_str(&format!(
                "{} = {{ share = {}, dirs = [{}] }}\n",
                q(a),
                q(sh),
                d.join(", ")
            ));
        }
    }
    t
}

fn toml_string(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs `prop` over `strategy`, counting accepted and rejected configs: a
/// generator that only ever produced one of the two would prove nothing.
fn run_counting<S: Strategy>(
    name: &str,
    min_percent: usize,
    strategy: S,
    prop: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (ok, err) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(cases(3000));
    let result = runner.run(&strategy, |v| {
        if prop(v)? {
            ok.fetch_add(1, Ordering::Relaxed);
        } else {
            err.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let (ok, err) = (ok.into_inner(), err.into_inner());
    eprintln!("{name}: {ok} accepted, {err} rejected, 0 panics");
    let total = ok + err;
    assert!(
        ok * 100 >= total * min_percent && err * 100 >= total * min_percent,
        "{name}: too one-sided to mean much: {ok} accepted, {err} rejected"
    );
}

#[test]
fn toml_ish_text_never_panics() {
    run_counting(
        "toml-ish text",
        1,
        (toml_ish(), overrides()),
        |(text, ov)| check_any(&text, &ov),
    );
}

#[test]
fn structured_configs_accepted_exactly_when_spec_allows() {
    run_counting("structured configs", 5, spec(), |s| {
        // Duplicate keys are a TOML error, not a validation question.
        let mut keys: Vec<&str> = s.links.iter().map(|l| l.0.as_str()).collect();
        keys.sort();
        keys.dedup();
        prop_assume!(keys.len() == s.links.len());
        // Dirs only count when the table form renders them.
        let s = Spec {
            links: s
                .links
                .iter()
                .enumerate()
                .map(|(i, (a, b, d))| {
                    (
                        a.clone(),
                        b.clone(),
                        if i % 2 == 0 { vec![] } else { d.clone() },
                    )
                })
                .collect(),
            ..s
        };
        let text = render(&s);
        let got = config::parse(&text, Path::new("fuzz.toml"), &Overrides::default());
        match (oracle(&s), got) {
            (Ok(want), Ok(cfg)) => {
                let mut got: Vec<_> = cfg
                    .links
                    .iter()
                    .map(|l| (l.app.clone(), l.share.clone(), l.dirs.clone()))
                    .collect();
                let mut want = want;
                got.sort();
                want.sort();
                prop_assert_eq!(got, want, "{}", text);
                Ok(true)
            }
            (Err(_), Err(e)) => {
                prop_assert_eq!(e.exit_code().code(), 78);
                // The message names a key (a link or a root).
                let m = e.to_string();
                prop_assert!(m.contains("links.") || m.contains("_root"), "{}", m);
                Ok(false)
            }
            (Ok(_), Err(e)) => Err(TestCaseError::fail(format!(
                "rejected a valid config: {e}\n{text}"
            ))),
            (Err(why), Ok(_)) => Err(TestCaseError::fail(format!(
                "accepted an invalid config ({why}):\n{text}"
            ))),
        }
    });
}
