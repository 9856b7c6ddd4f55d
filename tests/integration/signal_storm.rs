//! Signal storm: 10,000 signals of 17 kinds sent to sharelink as PID 1
//! (`unshare --pid --fork --mount-proc sharelink run -- sigcount`) while the
//! command runs and keeps making orphans.
//!
//! Standard signals of one kind coalesce while pending, so for them the
//! command must see at least one of each kind; real-time signals queue, so
//! for them it must see exactly as many as were sent. Throughout, no zombie
//! may stay under sharelink; afterwards SIGTERM is forwarded, the command's
//! status (7) is sharelink's, and nothing hangs.

use crate::support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOTAL: usize = 10_000;

fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Zombie children of `pid`.
fn zombies_under(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| {
            let stat = fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
            stat.rfind(')')
                .is_some_and(|i| stat[i + 2..].starts_with('Z'))
        })
        .collect()
}

fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?} (hang?)");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_counts(path: &Path) -> BTreeMap<i32, u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (s, n) = l.split_once(' ')?;
            Some((s.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

#[test]
fn signal_storm_to_pid1() {
    if !support::require_root("signal_storm_to_pid1") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let cfg = dir.join("sharelink.toml");
    fs::write(
        &cfg,
        support::config_text(&dir.join("app"), &dir.join("share"), false, "", ""),
    )
    .unwrap();
    fs::create_dir_all(dir.join("share")).unwrap();
    let log = dir.join("sharelink.log");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(support::bin())
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--grace-period", "2s", "--"])
        .arg(support::program("sigcount"))
        .arg(dir)
        .env_remove("SHARELINK_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    poll("the command to start", Duration::from_secs(30), || {
        dir.join("ready").exists().then_some(())
    });
    let sharelink = poll("sharelink under unshare", Duration::from_secs(10), || {
        children_of(unshare.id()).first().copied()
    });
    let stat = fs::read_to_string(format!("/proc/{sharelink}/status")).unwrap();
    assert!(
        stat.lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "sharelink is not PID 1 of its namespace: {stat}"
    );

    let standard = [
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGWINCH,
        libc::SIGALRM,
        libc::SIGCONT,
        libc::SIGURG,
        libc::SIGPIPE,
        libc::SIGIO,
        libc::SIGPROF,
        libc::SIGVTALRM,
        libc::SIGPWR,
    ];
    let realtime = [
        libc::SIGRTMIN() + 2,
        libc::SIGRTMIN() + 5,
        libc::SIGRTMAX() - 1,
    ];
    let kinds: Vec<i32> = standard.iter().chain(realtime.iter()).copied().collect();
    let mut sent: BTreeMap<i32, u64> = BTreeMap::new();
    let mut rng = support::Rng(support::seed("signal_storm_to_pid1"));
    let mut max_zombies = 0;
    let t0 = Instant::now();
    // 100 bursts of 100, 20 ms apart, so the storm overlaps the orphans (2 s).
    for burst in 0..TOTAL / 100 {
        for _ in 0..100 {
            let sig = kinds[(rng.next() % kinds.len() as u64) as usize];
            // SAFETY: plain syscall.
            let r = unsafe { libc::kill(sharelink as i32, sig) };
            assert_eq!(r, 0, "kill {sig}: {}", std::io::Error::last_os_error());
            *sent.entry(sig).or_default() += 1;
        }
        if burst % 10 == 0 {
            max_zombies = max_zombies.max(zombies_under(sharelink).len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let storm = t0.elapsed();
    // Every real-time signal arrives (they queue), and at least one of
    // each standard kind (they may coalesce).
    let counts_path = dir.join("counts");
    let got = poll(
        "every queued signal forwarded",
        Duration::from_secs(60),
        || {
            let got = read_counts(&counts_path);
            realtime
                .iter()
                .all(|s| got.get(s).copied().unwrap_or(0) >= sent[s])
                .then_some(got)
        },
    );
    for s in &kinds {
        let n = got.get(s).copied().unwrap_or(0);
        assert!(
            n >= 1,
            "signal {s}: sent {}, received none ({got:?})",
            sent[s]
        );
        assert!(n <= sent[s], "signal {s}: sent {}, received {n}", sent[s]);
    }
    for s in &realtime {
        assert_eq!(
            got[s], sent[s],
            "real-time signal {s} must neither be lost nor duplicated"
        );
    }
    // sharelink reaps every orphan the command left.
    poll("the command's orphans", Duration::from_secs(30), || {
        dir.join("orphans-done").exists().then_some(())
    });
    poll("no zombie under sharelink", Duration::from_secs(10), || {
        zombies_under(sharelink).is_empty().then_some(())
    });
    // SIGTERM ends it: forwarded, the command exits 7, so does sharelink.
    // SAFETY: plain syscall.
    unsafe { libc::kill(sharelink as i32, libc::SIGTERM) };
    let status = support::wait_with_limit(
        &mut unshare,
        Duration::from_secs(30),
        "sharelink after SIGTERM",
    );
    let err = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(support::code(&status), 7, "{err}");
    let last = read_counts(&counts_path);
    assert_eq!(last.get(&libc::SIGTERM), Some(&1), "{last:?}");
    let received: u64 = got.values().sum();
    support::report(&format!(
        "signal storm: {TOTAL} signals of {} kinds ({} real-time) to sharelink as PID 1 in {storm:.2?} while the command made 80 orphans: \
         received {received} (standard kinds coalesce: >=1 of each; real-time: all {} of {}), zombies seen mid-storm at most {max_zombies}, 0 left, exit status 7 passed through, no hang",
        kinds.len(),
        realtime.len(),
        realtime.iter().map(|s| sent[s]).sum::<u64>(),
        realtime.iter().map(|s| sent[s]).sum::<u64>()
    ));
}
