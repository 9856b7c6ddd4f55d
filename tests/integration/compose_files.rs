//! The compose files against the Compose Specification's JSON schema, as
//! bundled by check-jsonschema (`--builtin-schema vendor.compose-spec`,
//! installed from PyPI by `.ci/install-deps`), and free of the obsolete
//! top-level `version:` key.
//!
//! Without check-jsonschema the schema tests skip loudly; with `CI=true`
//! they fail instead.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const FILES: [&str; 2] = ["docker-compose.yml", "docker-compose.prod.yml"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The command that runs check-jsonschema: the script on PATH, else the
/// test tools' virtualenv (`.ci/install-deps`), else the module.
fn validator() -> Option<Vec<String>> {
    let venv =
        std::env::var("SHARELINK_PYTOOLS").unwrap_or_else(|_| "/opt/sharelink-pytools".into());
    let candidates: [Vec<String>; 3] = [
        vec!["check-jsonschema".into()],
        vec![format!("{venv}/bin/check-jsonschema")],
        vec!["python3".into(), "-m".into(), "check_jsonschema".into()],
    ];
    candidates.into_iter().find(|cmd| {
        Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The validator, or `None` after a loud skip (a failure under `CI=true`).
fn require_validator(test: &str) -> Option<Vec<String>> {
    let found = validator();
    if found.is_none() {
        support::skip_or_fail(
            test,
            "check-jsonschema not found",
            "pip install check-jsonschema (.ci/install-deps does)",
        );
    }
    found
}

fn validate(cmd: &[String], files: &[PathBuf]) -> Output {
    Command::new("timeout")
        .arg("120")
        .args(cmd)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("run check-jsonschema")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn compose_files_follow_the_compose_spec() {
    let Some(cmd) = require_validator("compose_files_follow_the_compose_spec") else {
        return;
    };
    let files: Vec<PathBuf> = FILES.iter().map(|f| root().join(f)).collect();
    let out = validate(&cmd, &files);
    assert!(
        out.status.success(),
        "schema validation failed:\n{}",
        text(&out)
    );
}

/// The check above means something only if an invalid file fails it.
#[test]
fn compose_schema_check_rejects_a_misspelt_key() {
    let Some(cmd) = require_validator("compose_schema_check_rejects_a_misspelt_key") else {
        return;
    };
    let good = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let bad = good.replacen("    restart:", "    restartt:", 1);
    assert_ne!(
        good, bad,
        "docker-compose.yml has no `restart:` key to misspell"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker-compose.yml");
    std::fs::write(&path, bad).unwrap();
    let out = validate(&cmd, &[path]);
    let msg = text(&out);
    assert!(
        !out.status.success(),
        "a misspelt key passed validation:\n{msg}"
    );
    assert!(
        msg.contains("restartt"),
        "the error does not name the key:\n{msg}"
    );
}

/// `version:` is obsolete in the Compose Specification (Compose v2 warns
/// about it); the schema still allows it, so it is checked here.
#[test]
fn compose_files_have_no_version_key() {
    for f in FILES {
        let body = std::fs::read_to_string(root().join(f)).unwrap();
        assert!(
            !body.lines().any(|l| l.starts_with("version:")),
            "{f} still has a top-level `version:` key"
        );
    }
}
