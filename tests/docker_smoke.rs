//! Runs the container smoke test `tests/docker/smoke.sh` (the real Dockerfile
//! and docker-compose.yml on this machine's Docker engine).
//!
//! - No usable Docker (engine or docker-compose missing) and `CI` is not
//!   `true`: skipped, loudly.
//! - `CI=true`: always runs; a missing Docker is a failure.
//! - `SHARELINK_SKIP_DOCKER_SMOKE=1` skips it outside CI (it builds a release
//!   binary and an image: a minute or two).
//!
//! The script's output is streamed to stderr as it runs (so a CI log shows
//! progress) and its FAIL lines are repeated in the panic message.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The script bounds every step itself; this is the backstop.
const DEADLINE: Duration = Duration::from_secs(45 * 60);

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Why Docker is not usable, if it is not.
fn docker_unusable() -> Option<String> {
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

fn loud_skip(why: &str) {
    let bar = "!".repeat(78);
    let msg = format!(
        "\n{bar}\n!!! SKIPPED: docker_smoke (container smoke test did NOT run)\n!!! {why}\n\
         !!! Run it with CI=true to make this a failure, or `bash tests/docker/smoke.sh`.\n{bar}\n"
    );
    // Straight to the process's stderr: visible even when the harness
    // captures test output.
    let _ = std::io::stderr().write_all(msg.as_bytes());
    println!("{msg}");
}

#[test]
fn docker_compose_smoke() {
    let ci = in_ci();
    if !ci
        && std::env::var("SHARELINK_SKIP_DOCKER_SMOKE")
            .map(|v| v == "1")
            .unwrap_or(false)
    {
        loud_skip("SHARELINK_SKIP_DOCKER_SMOKE=1");
        return;
    }
    if let Some(why) = docker_unusable() {
        if ci {
            panic!("CI=true but Docker is not usable: {why}");
        }
        loud_skip(&format!("Docker is not usable here: {why}"));
        return;
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("bash")
        .arg(root.join("tests/docker/smoke.sh"))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so the deadline can stop the whole script.
        .process_group(0)
        .spawn()
        .expect("start bash tests/docker/smoke.sh");
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
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let _ = std::io::stderr().write_all(format!("[docker-smoke] {line}\n").as_bytes());
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
        if let Some(status) = child.try_wait().expect("wait for smoke.sh") {
            break status;
        }
        if start.elapsed() > DEADLINE && !timed_out {
            timed_out = true;
            // SIGTERM first: the script's trap removes its containers.
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

    if !status.success() || timed_out {
        let fails: Vec<&String> = output.iter().filter(|l| l.starts_with("FAIL")).collect();
        let tail: Vec<&String> = output
            .iter()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "container smoke test failed ({status}{}):\n{}\n--- last lines ---\n{}\n(full output above, prefixed [docker-smoke])",
            if timed_out { ", hit the deadline" } else { "" },
            fails.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        );
    }
}
