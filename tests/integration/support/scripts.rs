//! Runs a shell test script from `cargo test`: its output is streamed to
//! stderr as it runs (a CI log shows progress), a deadline stops it (its
//! whole process group: TERM, so its trap can clean up, then KILL), and its
//! `FAIL` lines are repeated in the panic message.
//!
//! Skips: a script exits 77 when a prerequisite is missing (and says why on
//! a `SKIP:` line); the test is then skipped loudly, except with `CI=true`,
//! where every script must run. Callers check their own prerequisites the
//! same way through [`skip_or_fail`].
//!
//! Scripts run one at a time: they build images and release binaries, and
//! two at once would only make each slower than its own deadlines allow.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::skip_or_fail;

/// The exit code a script uses for "a prerequisite is missing".
pub const SKIP: i32 = 77;

/// Why Docker is not usable, if it is not.
pub fn docker_unusable() -> Option<String> {
    let probe = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("timeout")
            .arg("30")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    probe(&["docker", "info"])
        .and_then(|_| probe(&["docker-compose", "version"]))
        .err()
}

/// Run `bash <script>` from the repository root with `tag` before each
/// output line; panic unless it exits 0 (77: [`skip_or_fail`]).
pub fn run(test: &str, tag: &str, script: &str, deadline: Duration) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    // A script that failed (panicked) in another test leaves it poisoned:
    // that is no reason to fail this one.
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("bash")
        .arg(root.join(script))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so the deadline can stop the whole script.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start bash {script}: {e}"));
    let pgid = child.id() as i32;

    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        let tag = tag.to_string();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let _ = std::io::stderr().write_all(format!("[{tag}] {line}\n").as_bytes());
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let start = Instant::now();
    let mut output = Vec::new();
    let mut timed_out = false;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            output.push(line);
        }
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break status;
        }
        if start.elapsed() > deadline && !timed_out {
            timed_out = true;
            // SIGTERM first: the script's trap removes what it made.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(90) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in readers {
        let _ = r.join();
    }
    output.extend(rx.try_iter());

    if !timed_out && status.code() == Some(SKIP) {
        let why = output
            .iter()
            .find_map(|l| l.strip_prefix("SKIP: "))
            .unwrap_or("a prerequisite is missing");
        skip_or_fail(test, why, &format!("bash {script}"));
        return;
    }
    if !status.success() || timed_out {
        let fails: Vec<&str> = output
            .iter()
            .filter(|l| l.starts_with("FAIL"))
            .map(String::as_str)
            .collect();
        let tail: Vec<&str> = output[output.len().saturating_sub(60)..]
            .iter()
            .map(String::as_str)
            .collect();
        panic!(
            "{test} failed ({status}{}):\n{}\n--- last lines ---\n{}\n(full output above, prefixed [{tag}])",
            if timed_out { ", hit the deadline" } else { "" },
            fails.join("\n"),
            tail.join("\n"),
        );
    }
}
