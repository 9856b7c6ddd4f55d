//! `sharelink doctor`: each capability reported as the share behaves (the
//! latency rig refusing what SMB refuses, tmpfs keeping everything), the
//! round trip and the first-start estimate against the rig's delay and a
//! real `link`, the exit codes (69 unmounted, 73 a run user who cannot
//! write), and nothing left behind on the share.

use crate::support::latencyfs::LatencyFs;
use crate::support::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// SMB's refusals, as tests/tools/latencyfs documents them.
const SMB_DENY: &str = "link,xattr,mknod,chmod,chown,utimes,symlink,rename2";
/// The same with `mfsymlinks`: the baked tree's symlinks can move in.
const SMB_MFSYMLINKS_DENY: &str = "link,xattr,mknod,chmod,chown,utimes,rename2";

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\nstdout:\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

/// A sandbox whose share is `share` (a mount point: require_mount = true).
fn sandbox_on(share: &Path, links: &str) -> Sandbox {
    let mut sb = Sandbox::new(links);
    sb.share = share.to_path_buf();
    sb.write_config(true, links);
    sb
}

fn supports(v: &serde_json::Value) -> Vec<(String, bool)> {
    v["supports"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, b)| (k.clone(), b.as_bool().unwrap()))
        .collect()
}

#[test]
fn doctor_on_the_smb_like_rig_reports_each_capability_as_the_rig_behaves() {
    if !in_private_mount_ns!(
        "doctor_on_the_smb_like_rig_reports_each_capability_as_the_rig_behaves"
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = LatencyFs::mount(
        &tmp.path().join("backing"),
        &tmp.path().join("mnt"),
        &["--case-insensitive", "--deny", SMB_DENY],
    );
    fs::create_dir_all(rig.backing.join("data/keep")).unwrap();
    fs::write(rig.backing.join("data/keep/x.csv"), b"1,2\n").unwrap();
    let sb = sandbox_on(&rig.mnt, "\"data\" = \"data\"");
    let before = snapshot(&rig.backing);
    let o = sb.run(["doctor", "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    eprintln!("{v:#}");
    assert_eq!(v["mounted"], true);
    // fuser mounts with type `fuse` (mount(2), no fusermount subtype).
    assert!(v["fs_type"].as_str().unwrap().starts_with("fuse"), "{v:#}");
    assert_eq!(v["case_insensitive"], true);
    // Everything SMB_DENY refuses is reported missing; byte-range locks
    // are the kernel's own on FUSE, and work.
    let want = [
        ("byte_range_locks", true),
        ("hard_links", false),
        ("modes", false),
        ("owners", false),
        ("special_files", false),
        ("symlinks", false),
        ("xattrs", false),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(k, b)| (k.to_string(), *b)).collect();
    assert_eq!(supports(&v), want);
    let advice = v["advice"].to_string();
    for needle in ["ignores case", "does not keep symlinks", "FUSE filesystem"] {
        assert!(advice.contains(needle), "{needle}: {advice}");
    }
    assert_eq!(v["links"][0]["state"], "unlinked");
    assert_eq!(
        snapshot(&rig.backing),
        before,
        "doctor left something behind"
    );
    // The text form puts problems first.
    let o = sb.run(["doctor"]);
    expect_code(&o, 0);
    let text = stdout(&o);
    eprintln!("{text}");
    assert!(text.starts_with("warn"), "{text}");
    assert!(
        text.contains("case-INSENSITIVE") && text.contains("symlinks NO"),
        "{text}"
    );
    assert_eq!(
        snapshot(&rig.backing),
        before,
        "doctor left something behind"
    );
}

#[test]
fn doctor_on_tmpfs_reports_every_capability_kept() {
    if !in_private_mount_ns!("doctor_on_tmpfs_reports_every_capability_kept") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    mount_tmpfs(&share, "16m");
    let sb = sandbox_on(&share, "\"data\" = \"data\"");
    let before = snapshot(&share);
    let o = sb.run(["doctor", "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    assert_eq!(v["fs_type"], "tmpfs");
    assert_eq!(v["mounted"], true);
    assert_eq!(v["case_insensitive"], false);
    assert!(supports(&v).iter().all(|(_, b)| *b), "{v:#}");
    assert!(v["free_bytes"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["clock_skew_ms"].as_f64().unwrap().abs() < 1000.0, "{v:#}");
    // tmpfs is local: said, as a warning, not a failure.
    assert!(
        v["advice"].to_string().contains("not a network share"),
        "{v:#}"
    );
    assert_eq!(snapshot(&share), before, "doctor left something behind");
    assert!(names(&share).is_empty(), "{:?}", names(&share));
    // A share target on a mount of its own is reported with its mount.
    mount_tmpfs(&share.join("data"), "4m");
    let o = sb.run(["doctor"]);
    expect_code(&o, 0);
    let text = stdout(&o);
    assert!(text.contains("[own mount: tmpfs from tmpfs (rw,"), "{text}");
    assert_eq!(names(&share), ["data"]);
}

#[test]
fn doctor_round_trip_and_estimate_match_the_delayed_rig() {
    if !in_private_mount_ns!("doctor_round_trip_and_estimate_match_the_delayed_rig") {
        return;
    }
    const DELAY_MS: f64 = 5.0;
    let tmp = tempfile::tempdir().unwrap();
    let rig = LatencyFs::mount(
        &tmp.path().join("backing"),
        &tmp.path().join("mnt"),
        &[
            "--delay-ms",
            "5",
            "--case-insensitive",
            "--deny",
            SMB_MFSYMLINKS_DENY,
        ],
    );
    let sb = sandbox_on(&rig.mnt, "\"data\" = \"data\"");
    let files = knob("SHARELINK_DOCTOR_FILES", 300);
    make_tree(&sb.app.join("data"), files, 20_000, 20);
    let o = sb.run(["doctor", "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    let rtt = v["round_trip_ms"].as_f64().unwrap();
    // At least the delay; what is above it is FUSE's own cost and a busy CPU.
    assert!(
        (DELAY_MS..DELAY_MS + 10.0).contains(&rtt),
        "round trip {rtt} ms at {DELAY_MS} ms: {v:#}"
    );
    // The default on a network (here FUSE) share, probed with as many.
    assert_eq!(v["parallelism"], 64, "{v:#}");
    let link = &v["links"][0];
    assert_eq!(link["state"], "needs-migration");
    assert!(link["files"].as_u64().unwrap() >= files as u64, "{link}");
    let estimate = link["estimated_seconds"].as_f64().unwrap();
    let t = Instant::now();
    let o = sb.run(["link"]);
    let real = t.elapsed().as_secs_f64();
    expect_code(&o, 0);
    report(&format!(
        "doctor estimate {estimate:.2} s vs `link` {real:.2} s: {} files, {} bytes, rig at {DELAY_MS} ms (round trip measured {rtt:.2} ms)",
        link["files"], link["bytes"]
    ));
    assert!(
        estimate >= real / 2.0 && estimate <= real * 2.0,
        "estimate {estimate:.2} s, real first start {real:.2} s"
    );
}

#[test]
fn doctor_on_an_unmounted_share_exits_69() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    sb.write_config(true, "\"data\" = \"data\"");
    let o = sb.run(["doctor", "--json"]);
    expect_code(&o, 69);
    let v = json(&o);
    assert_eq!(v["mounted"], false);
    assert!(v["round_trip_ms"].is_null(), "{v:#}");
    assert!(v["advice"][0]["message"]
        .as_str()
        .unwrap()
        .contains("not a mount point"));
    assert!(names(&sb.share).is_empty(), "{:?}", names(&sb.share));
    // A share_root that is not there at all: the same.
    fs::remove_dir(&sb.share).unwrap();
    expect_code(&sb.run(["doctor"]), 69);
    // A bad config: 78.
    fs::write(&sb.config, "share_root = \"relative\"\n").unwrap();
    expect_code(&sb.run(["doctor"]), 78);
}

#[test]
fn doctor_names_a_run_user_who_cannot_write_a_share_target_and_exits_73() {
    if !require_root("doctor_names_a_run_user_who_cannot_write_a_share_target_and_exits_73") {
        return;
    }
    let links = "\"data\" = \"data\"\n\"cache\" = \"cache\"";
    let sb = Sandbox::new(links);
    for d in ["data", "cache"] {
        fs::create_dir(sb.share.join(d)).unwrap();
        fs::set_permissions(sb.share.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    sh(&format!(
        "chown 65534:65534 '{}'",
        sb.share.join("cache").display()
    ));
    let before = snapshot(&sb.share);
    let o = sb.run(["doctor", "--json", "--user", "65534:65534"]);
    expect_code(&o, 73);
    let v = json(&o);
    assert_eq!(v["run_user"]["uid"], 65534);
    assert_eq!(v["run_user"]["writable"], false);
    let data = sb.share.join("data").display().to_string();
    let errors: Vec<&str> = v["advice"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["level"] == "error")
        .map(|a| a["message"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("(uid 65534") && errors[0].contains(&data),
        "{errors:#?}"
    );
    assert_eq!(snapshot(&sb.share), before, "doctor left something behind");
    // Given the directory, the user can write both: 0.
    sh(&format!("chown 65534:65534 '{data}'"));
    let o = sb.run(["doctor", "--json", "--user", "65534:65534"]);
    expect_code(&o, 0);
    assert_eq!(json(&o)["run_user"]["writable"], true);
}

#[test]
fn doctor_gives_up_on_a_share_that_does_not_answer() {
    if !in_private_mount_ns!("doctor_gives_up_on_a_share_that_does_not_answer") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Every request takes 8 s: longer than doctor waits.
    let rig = LatencyFs::mount(
        &tmp.path().join("backing"),
        &tmp.path().join("mnt"),
        &["--delay-ms", "8000"],
    );
    let sb = sandbox_on(&rig.mnt, "\"data\" = \"data\"");
    let t = Instant::now();
    let mut child = sb
        .cmd()
        .args(["doctor", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The report is out when doctor gives up; the process itself may then
    // wait for the rig to answer the request its worker thread is in (a
    // FUSE request already sent holds the exit; SMB and NFS waits are
    // killable).
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let took = t.elapsed();
    let status = wait_with_limit(&mut child, Duration::from_secs(30), "doctor");
    assert_eq!(code(&status), 69, "{line}");
    assert!(took.as_secs_f64() < 7.5, "doctor answered after {took:?}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["round_trip_ms"].is_null(), "{v:#}");
    assert!(v["advice"].to_string().contains("did not answer"), "{v:#}");
}

#[test]
fn doctor_never_follows_a_symlink_planted_at_sharelink_and_keeps_what_is_there() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let elsewhere = sb.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, sb.share.join(".sharelink")).unwrap();
    let o = sb.run(["doctor", "--json"]);
    expect_code(&o, 65);
    assert!(names(&elsewhere).is_empty(), "{:?}", names(&elsewhere));
    assert!(json(&o)["advice"].to_string().contains(".sharelink"));
    // A real `.sharelink` with other sharelinks' entries: left as it was.
    fs::remove_file(sb.share.join(".sharelink")).unwrap();
    fs::create_dir_all(sb.share.join(".sharelink/locks")).unwrap();
    fs::create_dir_all(sb.share.join(".sharelink/displaced/data")).unwrap();
    let before = snapshot(&sb.share);
    expect_code(&sb.run(["doctor"]), 0);
    assert_eq!(snapshot(&sb.share), before);
}
