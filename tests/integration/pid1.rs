//! `sharelink run` as an init, with real processes: the real binary, as PID 1
//! of a new pid namespace (`unshare --pid --fork --mount-proc`, root only)
//! or as a child subreaper (anyone): exit status, signal forwarding (one
//! at a time, and a storm of 10,000), terminals, rewriting, reaping,
//! shutdown, and how the command is started.
//!
//! Tests that need root print a loud SKIPPED line and pass when not run as
//! root, except under `CI=true`, where they must run.
//!
//! Nothing here depends on tight timing: every wait polls for a condition
//! up to a generous deadline, and durations are only checked as lower bounds
//! (or against a grace period far longer than the work).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{self, bin, poll, require_root, DefaultSignals, Sandbox};

/// Upper bound for anything to happen on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Helpers

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// PID 1 of a new pid namespace with its own /proc.
    Pid1,
    /// A plain child of the test: sharelink is a child subreaper.
    Subreaper,
}

/// A [`Sandbox`] with no links (linking is a no-op), room for scripts and
/// marker files, and `sharelink run` started in it.
struct RunSandbox {
    sb: Sandbox,
}

impl RunSandbox {
    fn new() -> RunSandbox {
        let sb = Sandbox::new("");
        // Three lines and no `[links]`: tests append `[run]` tables (and
        // check the line numbers errors name).
        let text = format!(
            "app_root = {:?}\nshare_root = {:?}\nrequire_mount = false\n",
            sb.app, sb.share
        );
        std::fs::write(&sb.config, text).unwrap();
        RunSandbox { sb }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.sb.path(name)
    }

    fn dir(&self) -> String {
        self.sb.root.path().to_str().unwrap().to_owned()
    }

    /// Write a shell script and return its path.
    fn script(&self, name: &str, body: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// `sharelink --config ... run RUN_ARGS -- COMMAND`, in `mode`.
    fn command(&self, mode: Mode, run_args: &[&str], command: &[&str]) -> Command {
        let mut c = match mode {
            Mode::Pid1 => {
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc"]).arg(bin());
                c
            }
            Mode::Subreaper => Command::new(bin()),
        };
        c.arg("--config")
            .arg(&self.sb.config)
            .arg("run")
            .args(run_args)
            .arg("--")
            .args(command);
        prepare(&mut c);
        c
    }

    fn start(&self, mode: Mode, run_args: &[&str], command: &[&str]) -> Running {
        Running::start(self.command(mode, run_args, command), mode)
    }

    fn run(&self, mode: Mode, run_args: &[&str], command: &[&str]) -> Outcome {
        self.start(mode, run_args, command).finish()
    }
}

/// Debug logs on, a neutral cwd, stdin from /dev/null, and no file
/// descriptor inherited from the test harness beyond 0-2 (so the fd-leak
/// test sees only what sharelink itself lets through).
fn prepare(c: &mut Command) {
    c.default_signals();
    c.env("SHARELINK_LOG", "debug")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
}

struct Running {
    child: Child,
    mode: Mode,
    started: Instant,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

#[derive(Debug)]
struct Outcome {
    /// The exit code (unshare passes sharelink's through).
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

impl Running {
    fn start(mut c: Command, mode: Mode) -> Running {
        let mut child = c.spawn().expect("spawn sharelink");
        let out = reader(child.stdout.take().unwrap());
        let err = reader(child.stderr.take().unwrap());
        Running {
            child,
            mode,
            started: Instant::now(),
            out,
            err,
        }
    }

    /// The pid of the sharelink process, as seen from the test. Under
    /// unshare it is unshare's child; call this only once the command has
    /// shown it runs (a marker file), so that unshare's child has exec'd
    /// sharelink.
    fn sharelink_pid(&self) -> i32 {
        let me = self.child.id() as i32;
        match self.mode {
            Mode::Subreaper => me,
            Mode::Pid1 => poll("unshare's child", PATIENCE, || {
                children_of(me).first().copied()
            }),
        }
    }

    fn finish(mut self) -> Outcome {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = self
                    .err
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                panic!("sharelink did not exit within {PATIENCE:?}; stderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        // Output closes when the last holder of the pipes is gone; a
        // leftover that escaped sharelink would keep it open.
        let stdout = self
            .out
            .recv_timeout(PATIENCE)
            .expect("stdout still open: a process escaped");
        let stderr = self
            .err
            .recv_timeout(PATIENCE)
            .expect("stderr still open: a process escaped");
        Outcome {
            code: status
                .code()
                .unwrap_or_else(|| panic!("{status}; stderr:\n{stderr}")),
            stdout,
            stderr,
            elapsed,
        }
    }
}

fn wait_file(path: &Path) {
    poll(&path.display().to_string(), PATIENCE, || {
        path.exists().then_some(())
    });
}

/// The stat line of a process, `None` once it is gone.
fn stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Fields after the `(comm)` of /proc/PID/stat: state, ppid, ...
fn stat_fields(stat: &str) -> Vec<String> {
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(s) = stat(p) {
            if stat_fields(&s)[1] == pid.to_string() {
                out.push(p);
            }
        }
    }
    out
}

/// Zombie children of `pid`.
fn zombies_under(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|&c| stat(c).is_some_and(|s| stat_fields(&s)[0] == "Z"))
        .collect()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: plain syscall.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

fn sh(script: &str) -> [&str; 3] {
    ["sh", "-c", script]
}

// ---------------------------------------------------------------------------
// Exit status

#[test]
fn exit_codes_0_to_255_as_pid1() {
    if !require_root("exit_codes_0_to_255_as_pid1") {
        return;
    }
    let sb = RunSandbox::new();
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let sb = &sb;
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for n in (w..256).step_by(4) {
                        let o = sb.run(Mode::Pid1, &[], &sh(&format!("exit {n}")));
                        if o.code != n {
                            bad.push(format!("exit {n} gave {}: {}", o.code, o.stderr));
                        }
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn exit_codes_as_subreaper() {
    let sb = RunSandbox::new();
    for n in [0, 1, 2, 78, 126, 127, 128, 143, 255] {
        let o = sb.run(Mode::Subreaper, &[], &sh(&format!("exit {n}")));
        assert_eq!(o.code, n, "{o:?}");
        assert!(
            o.stderr.contains(&format!("command exited with {n}")),
            "{o:?}"
        );
    }
}

/// TERM, INT, HUP, QUIT, USR1, USR2, KILL: the command kills itself; the
/// exit code is 128+N.
#[test]
fn death_by_signal_is_128_plus_n() {
    let modes: &[Mode] = if require_root("death_by_signal_is_128_plus_n (as PID 1)") {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    for &mode in modes {
        for (name, n) in [
            ("TERM", libc::SIGTERM),
            ("INT", libc::SIGINT),
            ("HUP", libc::SIGHUP),
            ("QUIT", libc::SIGQUIT),
            ("USR1", libc::SIGUSR1),
            ("USR2", libc::SIGUSR2),
            ("KILL", libc::SIGKILL),
        ] {
            // No core file from QUIT.
            let o = sb.run(
                mode,
                &[],
                &sh(&format!("ulimit -c 0; kill -s {name} $$; sleep 30")),
            );
            assert_eq!(o.code, 128 + n, "{mode:?} {name}: {o:?}");
            assert!(o.stderr.contains(&format!("SIG{name}")), "{o:?}");
        }
    }
}

/// A termination signal sent to sharelink reaches the command and its death
/// becomes sharelink's status.
#[test]
fn forwarded_termination_ends_the_command() {
    let modes: &[Mode] = if require_root("forwarded_termination_ends_the_command (as PID 1)") {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    for &mode in modes {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            let ready = sb.path(&format!("ready-{mode:?}-{sig}"));
            let script = format!("ulimit -c 0; touch {}; exec sleep 1000", ready.display());
            let r = sb.start(mode, &[], &sh(&script));
            wait_file(&ready);
            kill(r.sharelink_pid(), sig);
            let o = r.finish();
            assert_eq!(o.code, 128 + sig, "{mode:?} {sig}: {o:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Signal forwarding

/// Counts per signal number written by the `sigcount` helper.
fn read_counts(path: &Path) -> BTreeMap<i32, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (s, n) = l.split_once(' ')?;
            Some((s.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// Every signal but SIGKILL, SIGSTOP and SIGCHLD, sent to sharelink, reaches
/// the command (which blocks and counts them all) exactly once, and
/// sharelink survives each: the fault signals sent with `kill` (ABRT, SEGV,
/// BUS, FPE, ILL, TRAP, SYS), SIGSTKFLT, the job-control signals and every
/// real-time signal, including those libc keeps for itself (32 to 34).
/// One at a time, each waited for, so none coalesce. SIGTERM comes last
/// and ends the command with its own status.
#[test]
fn every_catchable_signal_reaches_the_command_and_sharelink_survives() {
    let modes: &[Mode] = if require_root(
        "every_catchable_signal_reaches_the_command_and_sharelink_survives (as PID 1)",
    ) {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let signals: Vec<i32> = (1..=64)
        .filter(|&s| ![libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD, libc::SIGTERM].contains(&s))
        .collect();
    let sigcount = support::program("sigcount");
    let sb = RunSandbox::new();
    for &mode in modes {
        let d = sb.path(&format!("count-{mode:?}"));
        std::fs::create_dir(&d).unwrap();
        let r = sb.start(
            mode,
            &[],
            &[sigcount.to_str().unwrap(), d.to_str().unwrap()],
        );
        wait_file(&d.join("ready"));
        let pid = r.sharelink_pid();
        for &s in &signals {
            kill(pid, s);
            poll(
                &format!("{mode:?}: signal {s} counted by the command"),
                PATIENCE,
                || {
                    read_counts(&d.join("counts"))
                        .contains_key(&s)
                        .then_some(())
                },
            );
        }
        kill(pid, libc::SIGTERM);
        let o = r.finish();
        // sigcount exits 7 on SIGTERM: sharelink was alive to forward it.
        assert_eq!(o.code, 7, "{mode:?}: {o:?}");
        let counts = read_counts(&d.join("counts"));
        for &s in signals.iter().chain([libc::SIGTERM].iter()) {
            assert_eq!(counts.get(&s), Some(&1), "{mode:?} signal {s}: {counts:?}");
        }
        assert!(o.stderr.contains("forwarding SIGABRT"), "{}", o.stderr);
    }
}

/// Start `exec sleep` under sharelink (in a process group of its own when
/// `own_group`), then send SIGTSTP and SIGCONT to sharelink or straight to
/// the command: the command stops and resumes, sharelink never stops.
fn tstp_then_cont(name: &str, own_group: bool, to_sharelink: bool) {
    let sb = RunSandbox::new();
    let pidfile = sb.path(name);
    let script = format!(
        "echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 1000",
        pidfile.display()
    );
    let mut c = sb.command(Mode::Subreaper, &[], &sh(&script));
    prepare(&mut c);
    if own_group {
        c.process_group(0);
    }
    let r = Running::start(c, Mode::Subreaper);
    wait_file(&pidfile);
    let cmd: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let state = |pid| {
        stat(pid)
            .map(|s| stat_fields(&s)[0].clone())
            .unwrap_or_default()
    };
    // Wait for the exec, so the stop hits sleep and not the shell.
    poll("exec sleep", PATIENCE, || {
        std::fs::read_to_string(format!("/proc/{cmd}/comm"))
            .ok()
            .filter(|c| c.trim() == "sleep")
    });
    let me = r.sharelink_pid();
    let to = if to_sharelink { me } else { cmd };
    kill(to, libc::SIGTSTP);
    poll("command stopped", PATIENCE, || {
        (state(cmd) == "T").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(state(me), "T", "sharelink stopped");
    kill(to, libc::SIGCONT);
    poll("command resumed", PATIENCE, || {
        (state(cmd) != "T").then_some(())
    });
    kill(me, libc::SIGTERM);
    let o = r.finish();
    assert_eq!(o.code, 128 + libc::SIGTERM, "{o:?}");
}

/// SIGTSTP stops the command, not sharelink, when no job-control shell waits
/// for sharelink (here it shares the test's process group): sharelink stays
/// able to forward the SIGCONT that resumes the command.
#[test]
fn stop_signals_stop_the_command_not_sharelink() {
    tstp_then_cont("pid", false, true);
}

/// A supervisor without a terminal that starts sharelink in a process group
/// of its own looks like a shell to a naive check, but no shell will ever
/// continue a stopped sharelink: a SIGTSTP to the command stops only the
/// command, and sharelink goes on.
#[test]
fn own_process_group_without_a_terminal_is_not_a_shell_job() {
    tstp_then_cont("pid-own-group", true, false);
}

/// With `--kill-process-group` the command's whole group gets the signal
/// (here a grandchild traps it); without, only the command does and the
/// grandchild is a leftover that gets SIGTERM at shutdown.
#[test]
fn kill_process_group_reaches_a_grandchild() {
    let modes: &[Mode] = if require_root("kill_process_group_reaches_a_grandchild (as PID 1)") {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    let grandchild = sb.script(
        "grandchild.sh",
        "trap 'echo usr1 >> \"$1/got\"; exit 0' USR1\n\
         trap 'echo term >> \"$1/got\"; exit 0' TERM\n\
         touch \"$1/ready\"\n\
         while :; do sleep 0.05; done\n",
    );
    for &mode in modes {
        for flag in [true, false] {
            let d = sb.path(&format!("kpg-{mode:?}-{flag}"));
            std::fs::create_dir(&d).unwrap();
            let script = format!("sh {grandchild} {} & wait", d.display());
            let args: &[&str] = if flag { &["--kill-process-group"] } else { &[] };
            let r = sb.start(mode, args, &sh(&script));
            wait_file(&d.join("ready"));
            kill(r.sharelink_pid(), libc::SIGUSR1);
            let o = r.finish();
            // The command itself does not trap USR1.
            assert_eq!(o.code, 128 + libc::SIGUSR1, "{o:?}");
            // Appended: with the flag the grandchild may also get the
            // shutdown's SIGTERM before it has exited.
            let got = std::fs::read_to_string(d.join("got")).unwrap_or_default();
            let got: Vec<&str> = got.lines().collect();
            let ok = if flag {
                got.contains(&"usr1")
            } else {
                got == ["term"]
            };
            assert!(ok, "{mode:?} --kill-process-group={flag}: {got:?} {o:?}");
        }
    }
}

/// Signal storm: 10,000 signals of 17 kinds sent to sharelink as PID 1
/// (`unshare --pid --fork --mount-proc sharelink run -- sigcount`) while the
/// command runs and keeps making orphans.
///
/// Standard signals of one kind coalesce while pending, so for them the
/// command must see at least one of each kind; real-time signals queue, so
/// for them it must see exactly as many as were sent. Throughout, no zombie
/// may stay under sharelink; afterwards SIGTERM is forwarded, the command's
/// status (7) is sharelink's, and nothing hangs.
#[test]
fn signal_storm_to_pid1() {
    const TOTAL: usize = 10_000;
    if !require_root("signal_storm_to_pid1") {
        return;
    }
    let sb = RunSandbox::new();
    let dir = sb.sb.root.path();
    let cfg = &sb.sb.config;
    let log = dir.join("sharelink.log");
    let mut unshare = Command::new("unshare")
        .default_signals()
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(support::bin())
        .arg("--config")
        .arg(cfg)
        .args(["run", "--grace-period", "2s", "--"])
        .arg(support::program("sigcount"))
        .arg(dir)
        .env_remove("SHARELINK_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    poll("the command to start", PATIENCE, || {
        dir.join("ready").exists().then_some(())
    });
    let sharelink = poll("sharelink under unshare", PATIENCE, || {
        children_of(unshare.id() as i32).first().copied()
    });
    let stat = std::fs::read_to_string(format!("/proc/{sharelink}/status")).unwrap();
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
            let r = unsafe { libc::kill(sharelink, sig) };
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
    let got = poll("every queued signal forwarded", PATIENCE, || {
        let got = read_counts(&counts_path);
        realtime
            .iter()
            .all(|s| got.get(s).copied().unwrap_or(0) >= sent[s])
            .then_some(got)
    });
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
    poll("the command's orphans", PATIENCE, || {
        dir.join("orphans-done").exists().then_some(())
    });
    poll("no zombie under sharelink", PATIENCE, || {
        zombies_under(sharelink).is_empty().then_some(())
    });
    // SIGTERM ends it: forwarded, the command exits 7, so does sharelink.
    // SAFETY: plain syscall.
    unsafe { libc::kill(sharelink, libc::SIGTERM) };
    let status = support::wait_with_limit(
        &mut unshare,
        Duration::from_secs(30),
        "sharelink after SIGTERM",
    );
    let err = std::fs::read_to_string(&log).unwrap_or_default();
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

// ---------------------------------------------------------------------------
// Terminals and job control

/// A program on a pseudo-terminal: the leader of a new session whose
/// controlling terminal is the pty, as under `script` or an ssh login. The
/// test types into it and reads everything it prints.
struct Pty {
    child: Child,
    master: std::fs::File,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// How far `expect` has read.
    seen: usize,
}

impl Pty {
    fn spawn(mut c: Command) -> Pty {
        use std::os::fd::AsRawFd;
        let pty = nix::pty::openpty(None, None).unwrap();
        for fd in [pty.master.as_raw_fd(), pty.slave.as_raw_fd()] {
            // SAFETY: plain fcntl on our own fds.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        c.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave));
        // SAFETY: setsid, ioctl and close_range are async-signal-safe. Runs
        // after the pty is on fds 0-2; nothing else of the harness (another
        // test's pty) may leak in, or the pty would not close.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = c.spawn().expect("spawn on a pty");
        // The parent's copies of the slave go with `c`: the master reads
        // EIO once the session's last process has closed it.
        drop(c);
        let master = std::fs::File::from(pty.master);
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut r, sink) = (master.try_clone().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            master,
            out,
            seen: 0,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn send(&mut self, keys: &str) {
        use std::io::Write;
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Wait until `needle` is printed after what earlier calls matched.
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = {
                let out = self.out.lock().unwrap();
                out[self.seen..]
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
            };
            if let Some(i) = found {
                self.seen += i + needle.len();
                return;
            }
            if Instant::now() > deadline {
                let out = self.output();
                self.kill();
                panic!("{needle:?} not printed within {PATIENCE:?}; the terminal shows:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Type `question` (a command line) until the shell's answer, read up
    /// to the next `prompt`, satisfies `done`.
    fn ask_until(&mut self, question: &str, prompt: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let from = self.seen;
            self.send(question);
            self.expect(prompt);
            let answer =
                String::from_utf8_lossy(&self.out.lock().unwrap()[from..self.seen]).into_owned();
            if done(&answer) {
                return;
            }
            if Instant::now() > deadline {
                let out = self.output();
                self.kill();
                panic!("{question:?} never answered as expected; the terminal shows:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill the session's processes: the leader's group and every group of
    /// the session.
    fn kill(&mut self) {
        let sid = self.child.id() as i32;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // SAFETY: plain syscalls.
            if unsafe { libc::getsid(p) } == sid {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = self.child.wait();
    }

    /// The session leader's exit code, and everything the terminal showed.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                let code = s.code().unwrap_or(-1);
                return (code, self.output());
            }
            if Instant::now() > deadline {
                let out = self.output();
                self.kill();
                panic!("the session did not end within {PATIENCE:?}; the terminal shows:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// PID 1 of a PID namespace whose creator gave it no session of its own
/// (`unshare --pid --fork` on a terminal): sharelink's process group and
/// the terminal's foreground group read as 0 there, and sharelink must
/// still hand the terminal to the command, so that its `read` succeeds
/// instead of stopping it in the background.
#[test]
fn pid1_without_a_session_gives_the_command_the_terminal() {
    if !require_root("pid1_without_a_session_gives_the_command_the_terminal") {
        return;
    }
    let sb = RunSandbox::new();
    let mut c = Command::new("unshare");
    c.default_signals();
    c.args(["--pid", "--fork", "--mount-proc"])
        .arg(bin())
        .arg("--config")
        .arg(sb.path("sharelink.toml"))
        .args(["run", "--"])
        .args(sh("read line; echo \"got:$line\""))
        .env("SHARELINK_LOG", "debug")
        .current_dir("/");
    let mut pty = Pty::spawn(c);
    pty.send("hello\n");
    pty.expect("got:hello");
    let (code, out) = pty.finish();
    assert_eq!(code, 0, "{out}");
}

/// An interactive bash on a pseudo-terminal, at its first prompt.
fn interactive_bash() -> Pty {
    let mut c = Command::new("bash");
    c.default_signals();
    c.args(["--norc", "--noprofile", "--noediting", "-i"])
        .env("PS1", "PROMPT> ")
        .env("HISTFILE", "")
        .env("TERM", "dumb")
        .env("SHARELINK_LOG", "warn")
        .current_dir("/");
    let mut pty = Pty::spawn(c);
    pty.expect("PROMPT> ");
    pty
}

/// The command line that runs `job` without sharelink, then with it.
fn job_lines(sb: &RunSandbox, job: &str) -> [String; 2] {
    [
        format!("sh {job}"),
        format!(
            "{} --config {} run -- sh {job}",
            bin(),
            sb.path("sharelink.toml").display()
        ),
    ]
}

/// From an interactive bash on a terminal, job control does with sharelink
/// what it does without it: Ctrl-Z gives the prompt back, `fg` gives the
/// terminal back to the command, Ctrl-C ends it with 130; after `bg` its
/// read stops it ("Stopped (tty input)"), and SIGTERM then SIGCONT to the
/// job ends it.
#[test]
fn ctrl_z_fg_and_ctrl_c_from_an_interactive_shell() {
    let sb = RunSandbox::new();
    let job = sb.script(
        "job.sh",
        "echo started\nwhile read l; do echo \"got:$l\"; done\n",
    );
    for line in job_lines(&sb, &job) {
        let mut pty = interactive_bash();
        pty.send(&format!("{line}\n"));
        pty.expect("started");
        pty.send("\x1a");
        pty.expect("Stopped");
        pty.expect("PROMPT> ");
        // The shell has the terminal and runs commands.
        pty.send("echo \"a\"\"live\"\n");
        pty.expect("alive");
        pty.expect("PROMPT> ");
        pty.send("fg\n");
        pty.send("ping\n");
        pty.expect("got:ping");
        pty.send("\x03");
        pty.expect("PROMPT> ");
        pty.send("echo \"st\"\"atus=$?\"\n");
        pty.expect("status=130");
        // In the background, its read stops it (tty input); `kill %1`
        // (SIGTERM, then SIGCONT) ends it.
        pty.send(&format!("{line}\n"));
        pty.expect("started");
        pty.send("\x1a");
        pty.expect("Stopped");
        pty.expect("PROMPT> ");
        pty.send("bg\n");
        pty.expect("PROMPT> ");
        // bash tells of a job's change at the next prompt after it.
        pty.ask_until("jobs -l\n", "PROMPT> ", |a| {
            a.contains("Stopped (tty input)")
        });
        // SIGTERM, then SIGCONT to the job (what `kill %1` does, in an
        // order that does not race): it ends.
        pty.send("echo \"pg\"\"id=$(jobs -p)\"\n");
        pty.expect("pgid=");
        pty.expect("\n");
        let out = pty.output();
        let line_end = out[..pty.seen].trim_end();
        let pgid: i32 = line_end[line_end.rfind('=').unwrap() + 1..]
            .parse()
            .unwrap();
        pty.expect("PROMPT> ");
        let from = pty.seen;
        kill(-pgid, libc::SIGTERM);
        kill(-pgid, libc::SIGCONT);
        pty.ask_until("jobs -l\n", "PROMPT> ", |a| !a.contains("job.sh"));
        // Killed by SIGTERM without sharelink, exit 143 with it.
        let end = pty.output()[from..].to_owned();
        assert!(
            end.contains("Terminated") || end.contains("Exit 143"),
            "{line}: {end}"
        );
        pty.send("exit\n");
        let (code, out) = pty.finish();
        assert_eq!(code, 0, "{line}: {out}");
        assert!(!out.contains("no job control"), "{line}: {out}");
    }
}

/// A command that stops itself with SIGSTOP (bash's `suspend` does) gives
/// the interactive shell its prompt back, and `fg` resumes it: with
/// sharelink as without.
#[test]
fn a_command_stopping_itself_gives_the_shell_its_prompt_back() {
    let sb = RunSandbox::new();
    let job = sb.script("suspend.sh", "echo started\nkill -STOP $$\necho resumed\n");
    for line in job_lines(&sb, &job) {
        let mut pty = interactive_bash();
        pty.send(&format!("{line}\n"));
        pty.expect("started");
        pty.expect("Stopped");
        pty.expect("PROMPT> ");
        pty.send("fg\n");
        pty.expect("resumed");
        pty.expect("PROMPT> ");
        pty.send("exit\n");
        let (code, out) = pty.finish();
        assert_eq!(code, 0, "{line}: {out}");
    }
}

// ---------------------------------------------------------------------------
// Signal rewriting

/// A Python program with no SIGTERM handler: `finally` runs only if the
/// signal it gets is SIGINT (KeyboardInterrupt).
const PY_CLEANUP: &str = "\
import sys, time
d = sys.argv[1]
try:
    open(d + '/ready', 'w').close()
    while True:
        time.sleep(0.05)
finally:
    open(d + '/finally', 'w').close()
";

/// A Python program with its own SIGTERM handler, which ends it with 0 (a
/// CronJob's success); a SIGINT would be a KeyboardInterrupt and 130.
const PY_HANDLER: &str = "\
import signal, sys, time
d = sys.argv[1]
def on_term(signum, frame):
    open(d + '/finally', 'w').close()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(d + '/ready', 'w').close()
while True:
    time.sleep(0.05)
";

/// Start PY_CLEANUP under sharelink with `run_args` (and `config_run`
/// appended to the config's `[run]` table), send SIGTERM to sharelink, and
/// return the exit code and whether the `finally` block ran.
fn python_gets_sigterm(
    sb: &RunSandbox,
    name: &str,
    run_args: &[&str],
    config_run: &str,
) -> (i32, bool) {
    python_program_gets_sigterm(sb, PY_CLEANUP, name, run_args, config_run)
}

/// The same with any program taking the directory for `ready` and
/// `finally` as its argument.
fn python_program_gets_sigterm(
    sb: &RunSandbox,
    program: &str,
    name: &str,
    run_args: &[&str],
    config_run: &str,
) -> (i32, bool) {
    let d = sb.path(name);
    std::fs::create_dir(&d).unwrap();
    let cfg = sb.path(&format!("{name}.toml"));
    let base = std::fs::read_to_string(sb.path("sharelink.toml")).unwrap();
    std::fs::write(&cfg, format!("{base}[run]\n{config_run}\n")).unwrap();
    let script = sb.script(&format!("{name}.py"), program);
    let mut c = Command::new(bin());
    c.default_signals();
    c.arg("--config").arg(&cfg).arg("run").args(run_args).args([
        "--",
        "python3",
        &script,
        d.to_str().unwrap(),
    ]);
    prepare(&mut c);
    let r = Running::start(c, Mode::Subreaper);
    wait_file(&d.join("ready"));
    kill(r.sharelink_pid(), libc::SIGTERM);
    let o = r.finish();
    (o.code, d.join("finally").exists())
}

/// `--rewrite TERM:INT`: Python turns the SIGINT into KeyboardInterrupt and
/// runs its `finally` block; without the rewrite SIGTERM kills it outright.
#[test]
fn rewrite_term_to_int_lets_python_clean_up() {
    let sb = RunSandbox::new();
    let sigint = 128 + libc::SIGINT;
    let sigterm = 128 + libc::SIGTERM;
    assert_eq!(python_gets_sigterm(&sb, "plain", &[], ""), (sigterm, false));
    for (name, args) in [
        ("names", &["--rewrite", "TERM:INT"][..]),
        ("numbers", &["--rewrite", "15:2"][..]),
        ("prefixed", &["--rewrite", "sigterm:SIGINT"][..]),
        (
            "group",
            &["--kill-process-group", "--rewrite", "term:int"][..],
        ),
    ] {
        assert_eq!(
            python_gets_sigterm(&sb, name, args, ""),
            (sigint, true),
            "{args:?}"
        );
    }
}

/// The same from the config's `[run] rewrite` table, and a command-line
/// rule replaces the config's rule for the same signal.
#[test]
fn rewrite_from_config_and_cli_wins() {
    let sb = RunSandbox::new();
    let sigint = 128 + libc::SIGINT;
    assert_eq!(
        python_gets_sigterm(&sb, "config", &[], "rewrite = { TERM = \"INT\" }"),
        (sigint, true)
    );
    // The config drops SIGTERM (it would never reach Python, and the test
    // would hang); the command line turns it into SIGINT instead.
    assert_eq!(
        python_gets_sigterm(
            &sb,
            "override",
            &["--rewrite", "TERM:INT"],
            "rewrite = { TERM = 0 }"
        ),
        (sigint, true)
    );
}

/// The default forwards SIGTERM unchanged, so a program's own SIGTERM
/// handler runs and its exit 0 is the container's; `TERM:INT-if-uncaught`
/// leaves that program alone and still gives a program without a handler
/// SIGINT (KeyboardInterrupt, `finally`). A plain `TERM:INT` is what breaks
/// the handler: 130 instead of 0.
#[test]
fn conditional_rewrite_spares_programs_with_their_own_handler() {
    let sb = RunSandbox::new();
    let sigint = 128 + libc::SIGINT;
    let handler = |name: &str, args: &[&str], cfg: &str| {
        python_program_gets_sigterm(&sb, PY_HANDLER, name, args, cfg)
    };
    assert_eq!(handler("h-default", &[], ""), (0, true));
    assert_eq!(
        handler("h-cond", &["--rewrite", "TERM:INT-if-uncaught"], ""),
        (0, true)
    );
    assert_eq!(
        handler(
            "h-cond-cfg",
            &[],
            "rewrite = { TERM = \"INT-if-uncaught\" }"
        ),
        (0, true)
    );
    assert_eq!(
        handler("h-always", &["--rewrite", "TERM:INT"], ""),
        (sigint, false)
    );
    for (name, args, cfg) in [
        ("c-cond", &["--rewrite", "TERM:INT-if-uncaught"][..], ""),
        (
            "c-cond-cfg",
            &[][..],
            "rewrite = { TERM = \"INT-if-uncaught\" }",
        ),
        (
            "c-cond-group",
            &["--kill-process-group", "--rewrite", "15:2-if-uncaught"][..],
            "",
        ),
    ] {
        assert_eq!(
            python_gets_sigterm(&sb, name, args, cfg),
            (sigint, true),
            "{name}"
        );
    }
}

/// A dropped signal never reaches the command; others still do.
#[test]
fn rewrite_to_zero_drops_the_signal() {
    let sb = RunSandbox::new();
    let log = sb.path("got");
    let ready = sb.path("ready");
    let script = format!(
        "trap 'echo usr1 >> {0}' USR1\ntrap 'echo usr2 >> {0}; exit 0' USR2\n\
         touch {1}\nwhile :; do sleep 0.05; done\n",
        log.display(),
        ready.display()
    );
    let path = sb.script("drop.sh", &script);
    let r = sb.start(Mode::Subreaper, &["--rewrite", "USR1:0"], &["sh", &path]);
    wait_file(&ready);
    let pid = r.sharelink_pid();
    kill(pid, libc::SIGUSR1);
    // USR2 ends the command; once it has, the USR1 sent first had its
    // chance (sharelink takes signals in order, lowest number first).
    kill(pid, libc::SIGUSR2);
    let o = r.finish();
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "usr2\n", "{o:?}");
    assert!(o.stderr.contains("SIGUSR1 not forwarded"), "{o:?}");
}

/// Bad rules: a usage error (2) on the command line, a config error (78)
/// naming the key and line in the file; the command never starts.
#[test]
fn bad_rewrite_rules_are_refused() {
    let sb = RunSandbox::new();
    let marker = sb.path("ran");
    let touch = format!("touch {}", marker.display());
    for (rule, culprit) in [
        ("TERM:BOGUS", "BOGUS"),
        ("NOPE:INT", "NOPE"),
        ("TERM", "FROM:TO"),
        ("KILL:INT", "SIGKILL"),
        ("sigstop:INT", "SIGSTOP"),
        ("15:65", "65"),
    ] {
        let o = sb.run(Mode::Subreaper, &["--rewrite", rule], &sh(&touch));
        assert_eq!(o.code, 2, "{rule}: {o:?}");
        assert!(o.stderr.contains(culprit), "{rule}: {o:?}");
    }
    let base = std::fs::read_to_string(sb.path("sharelink.toml")).unwrap();
    for (table, culprit) in [
        ("{ TERM = \"BOGUS\" }", "run.rewrite.TERM"),
        ("{ KILL = \"INT\" }", "SIGKILL"),
        ("{ TERM = 99 }", "99"),
    ] {
        std::fs::write(
            sb.path("sharelink.toml"),
            format!("{base}[run]\nrewrite = {table}\n"),
        )
        .unwrap();
        let o = sb.run(Mode::Subreaper, &[], &sh(&touch));
        assert_eq!(o.code, 78, "{table}: {o:?}");
        assert!(o.stderr.contains(culprit), "{table}: {o:?}");
        assert!(o.stderr.contains("line 5"), "{table}: {o:?}");
    }
    assert!(!marker.exists(), "the command must not run");
}

// ---------------------------------------------------------------------------
// Reaping

/// Shell helpers for the zombie tests, run by the command as PID 2 of the
/// namespace: `adopted` counts the processes whose parent is sharelink
/// (PID 1): the command itself and the orphans, alive or zombie; `zombies`
/// the adopted ones in state Z. `settle` waits until the command is the
/// only one left, so every orphan has been reaped.
const PROC_HELPERS: &str = "\
adopted() { cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') . 1 '; }
zombies() { cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z 1 '; }
settle() {
  n=0
  while [ \"$(adopted)\" -gt 1 ]; do
    n=$((n+1))
    if [ $n -gt 1200 ]; then echo \"left: $(adopted) adopted processes, $(zombies) zombies\"; exit 1; fi
    sleep 0.05
  done
  echo settled
}
";

/// 2,000 orphans, created one after another, each exiting at once: none is
/// left as a zombie while the command still runs.
#[test]
fn zombies_created_one_after_another_are_reaped() {
    if !require_root("zombies_created_one_after_another_are_reaped") {
        return;
    }
    let sb = RunSandbox::new();
    let path = sb.script(
        "seq.sh",
        &format!(
            "{PROC_HELPERS}\
             i=0\n\
             while [ $i -lt 2000 ]; do ( : & ); i=$((i+1)); done\n\
             settle\n"
        ),
    );
    let o = sb.run(Mode::Pid1, &[], &["sh", &path]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("settled"), "{o:?}");
}

/// 2,000 orphans blocked on one pipe, released together by closing its
/// last writer: their SIGCHLDs coalesce, and every one is still reaped.
#[test]
fn zombies_released_at_once_are_reaped() {
    if !require_root("zombies_released_at_once_are_reaped") {
        return;
    }
    let sb = RunSandbox::new();
    let path = sb.script(
        "burst.sh",
        &format!(
            "{PROC_HELPERS}\
             mkfifo \"$1/gate\"\n\
             exec 3<>\"$1/gate\"\n\
             exec 4<\"$1/gate\"\n\
             i=0\n\
             while [ $i -lt 2000 ]; do ( cat <&4 3>&- >/dev/null & ); i=$((i+1)); done\n\
             echo \"waiting: $(adopted) adopted\"\n\
             exec 3>&-\n\
             settle\n"
        ),
    );
    let o = sb.run(Mode::Pid1, &[], &["sh", &path, &sb.dir()]);
    assert_eq!(o.code, 0, "{o:?}");
    // The readers really were there, all blocked and adopted, before the
    // release (2,000 and the command).
    let waiting: usize = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("waiting: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{o:?}"));
    assert!(waiting >= 2001, "{o:?}");
    assert!(o.stdout.contains("settled"), "{o:?}");
}

/// Not PID 1: sharelink is a child subreaper, so an orphan of the command
/// is re-parented to sharelink (not to the real init) and reaped by it.
#[test]
fn subreaper_adopts_and_reaps_orphans() {
    let sb = RunSandbox::new();
    let orphan = sb.script(
        "orphan.sh",
        // Waits until its parent is sharelink ($2) or anyone but its first
        // parent (the subshell, or already its adopter), and says who.
        "d=$1\n\
         expected=$2\n\
         first=\n\
         echo $$ > \"$d/orphan.tmp\"; mv \"$d/orphan.tmp\" \"$d/orphan\"\n\
         while :; do\n\
           read -r line < /proc/$$/stat\n\
           set -- ${line##*\") \"}\n\
           [ -z \"$first\" ] && first=$2\n\
           if [ \"$2\" = \"$expected\" ] || [ \"$2\" != \"$first\" ]; then\n\
             echo \"$2\" > \"$d/adopted.tmp\"; mv \"$d/adopted.tmp\" \"$d/adopted\"; exit 0\n\
           fi\n\
           sleep 0.02\n\
         done\n",
    );
    let main = sb.script(
        "main.sh",
        &format!(
            "d=$1\n\
             ( sh {orphan} \"$d\" \"$PPID\" & )\n\
             n=0\n\
             until [ -e \"$d/adopted\" ]; do n=$((n+1)); [ $n -gt 3000 ] && exit 1; sleep 0.02; done\n\
             pid=$(cat \"$d/orphan\")\n\
             n=0\n\
             while [ -e /proc/$pid ]; do n=$((n+1)); [ $n -gt 3000 ] && exit 2; sleep 0.02; done\n\
             exit 0\n"
        ),
    );
    let r = sb.start(Mode::Subreaper, &[], &["sh", &main, &sb.dir()]);
    let me = r.sharelink_pid();
    let o = r.finish();
    assert_eq!(o.code, 0, "1: not adopted, 2: not reaped; {o:?}");
    let adopted = std::fs::read_to_string(sb.path("adopted")).unwrap();
    assert_eq!(adopted.trim(), me.to_string(), "adopted by sharelink");
    assert!(o.stderr.contains("child subreaper"), "{}", o.stderr);
}

// ---------------------------------------------------------------------------
// Shutdown

/// A background job left behind with a TERM trap gets SIGTERM after the
/// command exits, its trap runs, and sharelink exits as soon as it is gone
/// (long before the 60 s grace period).
#[test]
fn leftover_with_term_trap_gets_term() {
    let modes: &[Mode] = if require_root("leftover_with_term_trap_gets_term (as PID 1)") {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    let path = sb.script(
        "trapper.sh",
        "sh -c 'trap \"echo trapped > \\\"$0/trapped\\\"; exit 0\" TERM; touch \"$0/ready\"; \
         while :; do sleep 0.05; done' \"$1\" &\n\
         while [ ! -e \"$1/ready\" ]; do sleep 0.02; done\n\
         exit 3\n",
    );
    for &mode in modes {
        let d = sb.path(&format!("trap-{mode:?}"));
        std::fs::create_dir(&d).unwrap();
        let o = sb.run(
            mode,
            &["--grace-period", "60s"],
            &["sh", &path, d.to_str().unwrap()],
        );
        assert_eq!(o.code, 3, "{o:?}");
        let got = std::fs::read_to_string(d.join("trapped")).unwrap_or_default();
        assert_eq!(got.trim(), "trapped", "{mode:?}: {o:?}");
        assert!(
            o.elapsed < Duration::from_secs(60),
            "waited the whole grace: {o:?}"
        );
        assert!(!o.stderr.contains("SIGKILL"), "{o:?}");
    }
}

/// A leftover that is stopped (SIGSTOP) gets SIGCONT with its SIGTERM, so
/// its trap runs within the grace period instead of it being SIGKILLed.
#[test]
fn stopped_leftover_is_continued_for_term() {
    let modes: &[Mode] = if require_root("stopped_leftover_is_continued_for_term (as PID 1)") {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    let path = sb.script(
        "stopped.sh",
        "sh -c 'trap \"echo trapped > \\\"$0/trapped\\\"; exit 0\" TERM; touch \"$0/ready\"; \
         while :; do sleep 0.05; done' \"$1\" &\n\
         while [ ! -e \"$1/ready\" ]; do sleep 0.02; done\n\
         kill -STOP $!\n\
         exit 4\n",
    );
    for &mode in modes {
        let d = sb.path(&format!("stopped-{mode:?}"));
        std::fs::create_dir(&d).unwrap();
        let o = sb.run(
            mode,
            &["--grace-period", "60s"],
            &["sh", &path, d.to_str().unwrap()],
        );
        assert_eq!(o.code, 4, "{o:?}");
        let got = std::fs::read_to_string(d.join("trapped")).unwrap_or_default();
        assert_eq!(got.trim(), "trapped", "{mode:?}: {o:?}");
        assert!(!o.stderr.contains("SIGKILL"), "{o:?}");
    }
}

/// A leftover that ignores SIGTERM is SIGKILLed once the grace period is
/// over; sharelink still exits with the command's code.
#[test]
fn leftover_ignoring_term_is_killed_after_grace() {
    let modes: &[Mode] = if require_root("leftover_ignoring_term_is_killed_after_grace (as PID 1)")
    {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    // The trap is set before the pid is published, so the command cannot
    // exit (and the SIGTERM come) before the leftover ignores it.
    let path = sb.script(
        "stubborn.sh",
        "sh -c 'trap \"\" TERM; echo $$ > \"$0/pid.tmp\"; mv \"$0/pid.tmp\" \"$0/pid\"; \
         exec sleep 1000' \"$1\" &\n\
         while [ ! -e \"$1/pid\" ]; do sleep 0.02; done\n\
         exit 5\n",
    );
    let grace = Duration::from_secs(1);
    for &mode in modes {
        let d = sb.path(&format!("stubborn-{mode:?}"));
        std::fs::create_dir(&d).unwrap();
        let o = sb.run(
            mode,
            &["--grace-period", "1s"],
            &["sh", &path, d.to_str().unwrap()],
        );
        assert_eq!(o.code, 5, "{o:?}");
        assert!(
            o.elapsed >= grace,
            "exited before the grace period was over: {o:?}"
        );
        let term = o
            .stderr
            .find("sending SIGTERM")
            .unwrap_or_else(|| panic!("{o:?}"));
        let kill = o
            .stderr
            .find("sending SIGKILL")
            .unwrap_or_else(|| panic!("{o:?}"));
        assert!(term < kill, "{o:?}");
        if mode == Mode::Subreaper {
            // Outside a namespace nothing else would have killed it.
            let pid: i32 = std::fs::read_to_string(d.join("pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if let Some(s) = stat(pid) {
                let _ = unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("leftover {pid} survived sharelink: {s}");
            }
        }
    }
}

/// Nothing left after the command: sharelink exits at once, even with a
/// long grace period.
#[test]
fn no_leftovers_means_no_wait() {
    let sb = RunSandbox::new();
    let o = sb.run(Mode::Subreaper, &["--grace-period", "60s"], &sh("exit 9"));
    assert_eq!(o.code, 9, "{o:?}");
    assert!(o.elapsed < Duration::from_secs(60), "{o:?}");
    assert!(!o.stderr.contains("sending SIGTERM"), "{o:?}");
}

// ---------------------------------------------------------------------------
// Starting the command

#[test]
fn exec_failures_are_126_and_127() {
    let sb = RunSandbox::new();
    let plain = sb.script("plain.txt", "not a program\n");
    let garbage = sb.path("garbage");
    std::fs::write(&garbage, b"\x7fELF\x01\x02garbage").unwrap();
    let no_interp = sb.script("no-interp.sh", "#!/nonexistent/interpreter\n");
    use std::os::unix::fs::PermissionsExt;
    for p in [&garbage, &PathBuf::from(&no_interp)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let garbage = garbage.to_str().unwrap().to_owned();
    let dir = sb.dir();
    for (cmd, code, says) in [
        ("sharelink-no-such-command", 127, "not found"),
        ("/nonexistent/bin/tool", 127, "not found"),
        (no_interp.as_str(), 127, "interpreter"),
        (plain.as_str(), 126, "not executable"),
        (dir.as_str(), 126, "not executable"),
        (garbage.as_str(), 126, "Exec format error"),
    ] {
        let o = sb.run(Mode::Subreaper, &[], &[cmd, "arg"]);
        assert_eq!(o.code, code, "{cmd}: {o:?}");
        assert!(
            o.stderr.contains(&format!("{cmd:?}")),
            "names the command: {o:?}"
        );
        assert!(o.stderr.contains(says), "{cmd}: {o:?}");
    }
}

/// A misspelt command is found missing before linking: 127, the baked data
/// still in the image, nothing on the share. A command that only exists
/// once a data directory is linked (a tool kept on the share) still runs.
#[test]
fn a_missing_command_exits_127_before_linking() {
    use crate::support::{expect_code, make_tree, snapshot, stderr, stdout};
    let sb = Sandbox::new("\"data\" = \"data\"\n\"tools\" = \"tools\"");
    make_tree(&sb.app.join("data"), 5, 100, 7);
    let before = snapshot(&sb.app);
    for cmd in ["pythn3", "/nonexistent/bin/tool"] {
        let o = sb.run(["run", "--", cmd]);
        expect_code(&o, 127);
        let err = stderr(&o);
        assert!(
            err.contains("not found") && err.contains("nothing was linked or moved"),
            "{err}"
        );
        assert_eq!(snapshot(&sb.app), before, "{cmd}");
        assert!(snapshot(&sb.share).is_empty(), "{cmd}");
    }
    // On the share only: reachable through the link made first.
    std::fs::create_dir_all(sb.share.join("tools")).unwrap();
    let tool = sb.share.join("tools/hello.sh");
    std::fs::write(&tool, "#!/bin/sh\necho hello\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = sb.run(["run", "--", sb.app.join("tools/hello.sh").to_str().unwrap()]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "hello\n");
}

/// `run --user` with a baked directory root owns: after migrating, the
/// user could not write it; sharelink says so, naming the directory, the
/// user and the fix, before the command starts. Owned by the user: quiet.
#[test]
fn a_data_directory_the_user_cannot_write_is_reported() {
    use crate::support::{expect_code, make_tree, sh, stderr};
    if !require_root("a_data_directory_the_user_cannot_write_is_reported") {
        return;
    }
    let sb = Sandbox::new("\"data\" = \"data\"");
    make_tree(&sb.app.join("data"), 3, 10, 8);
    sh(&format!("chmod a+rx '{}'", sb.root.path().display()));
    let o = sb.run(["run", "--user", "nobody", "--", "true"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    let target = sb.share.join("data");
    assert!(
        err.contains("user nobody (uid 65534")
            && err.contains(&format!("cannot write {}", target.display())),
        "{err}"
    );
    assert!(
        err.contains("chown") && err.contains("uid=65534,gid=65534"),
        "{err}"
    );
    sh(&format!("chown -R 65534:65534 '{}'", target.display()));
    let o = sb.run(["run", "--user", "nobody", "--", "true"]);
    expect_code(&o, 0);
    assert!(!stderr(&o).contains("cannot write"), "{}", stderr(&o));
    // A share root the user cannot enter: said once, about the share.
    sh(&format!("chmod 0700 '{}'", sb.share.display()));
    let o = sb.run(["run", "--user", "nobody", "--", "true"]);
    let err = stderr(&o);
    assert!(
        err.contains("cannot enter the share") && err.contains("mode 0700"),
        "{err}"
    );
    assert!(!err.contains("cannot write"), "{err}");
}

#[test]
fn path_search_skips_directories_it_cannot_use() {
    let sb = RunSandbox::new();
    // An entry that is a file, one that does not exist, and one where the
    // name is a directory come before the real one.
    std::fs::create_dir_all(sb.path("bin1/true")).unwrap();
    let path = format!(
        "{0}/sharelink.toml:/nonexistent:{0}/bin1:/usr/bin:/bin",
        sb.dir()
    );
    let mut c = sb.command(Mode::Subreaper, &[], &["true"]);
    c.env("PATH", path);
    let o = Running::start(c, Mode::Subreaper).finish();
    assert_eq!(o.code, 0, "{o:?}");
}

/// After dropping root, a PATH directory the user may not search is
/// skipped like a missing one: "not found" stays 127 (execvp would say
/// EACCES, 126), and a command later in PATH is still found.
#[test]
fn unsearchable_path_entries_are_skipped() {
    if !require_root("unsearchable_path_entries_are_skipped") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let sb = RunSandbox::new();
    let private = sb.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = format!("{}:/usr/bin:/bin", private.display());
    for (cmd, code) in [("sharelink-no-such-command", 127), ("true", 0)] {
        let mut c = sb.command(Mode::Subreaper, &["--user", "nobody"], &[cmd]);
        c.env("PATH", &path);
        let o = Running::start(c, Mode::Subreaper).finish();
        assert_eq!(o.code, code, "{cmd}: {o:?}");
    }
}

/// The command starts in sharelink's working directory; sharelink itself
/// moves to `/` once the command runs, so it holds no directory (a share
/// being unmounted) busy.
#[test]
fn working_directory_is_the_commands_not_sharelinks() {
    let sb = RunSandbox::new();
    let mut c = sb.command(
        Mode::Subreaper,
        &[],
        // sharelink leaves once the command has started: wait for it.
        &sh("readlink /proc/$$/cwd; n=0; \
             while [ \"$(readlink /proc/$PPID/cwd)\" != / ] && [ $n -lt 1500 ]; do \
               n=$((n+1)); sleep 0.02; done; \
             readlink /proc/$PPID/cwd"),
    );
    c.current_dir(sb.sb.root.path());
    let o = Running::start(c, Mode::Subreaper).finish();
    assert_eq!(o.code, 0, "{o:?}");
    let dir = sb.sb.root.path().canonicalize().unwrap();
    assert_eq!(o.stdout, format!("{}\n/\n", dir.display()), "{o:?}");
}

#[test]
fn no_fd_leaks_into_the_command() {
    let modes: &[Mode] = if require_root("no_fd_leaks_into_the_command (as PID 1)") {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    for &mode in modes {
        let o = sb.run(mode, &[], &sh("ls /proc/$$/fd"));
        assert_eq!(o.code, 0, "{o:?}");
        let fds: Vec<&str> = o.stdout.split_whitespace().collect();
        assert_eq!(fds, ["0", "1", "2"], "{mode:?}: {o:?}");
    }
}

/// `grep SigBlk/SigIgn /proc/self/status` of a command started with
/// `ignore` ignored and `block` blocked, by sharelink or (`direct`) without
/// it. grep reads its own status: a shell would show its own transient
/// masks (dash blocks signals around fork and wait).
fn command_signal_state(
    sb: &RunSandbox,
    direct: bool,
    ignore: &'static [i32],
    block: &'static [i32],
) -> (u64, u64) {
    let probe = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    let mut c = if direct {
        let mut c = Command::new(probe[0]);
        c.default_signals();
        c.args(&probe[1..]);
        prepare(&mut c);
        c
    } else {
        sb.command(Mode::Subreaper, &[], &probe)
    };
    // SAFETY: signal() and sigprocmask() are single system calls.
    unsafe {
        c.pre_exec(move || {
            for &sig in ignore {
                libc::signal(sig, libc::SIG_IGN);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &sig in block {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let o = Running::start(c, Mode::Subreaper).finish();
    assert_eq!(o.code, 0, "{o:?}");
    let field = |name: &str| {
        let line = o
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{o:?}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    (field("SigBlk:"), field("SigIgn:"))
}

fn mask(sigs: &[i32]) -> u64 {
    sigs.iter().fold(0, |m, &s| m | 1 << (s - 1))
}

/// The command gets the signal state it would get without sharelink: the
/// Rust runtime's own SIGPIPE ignore does not leak into it, and every
/// signal sharelink was started with ignored or blocked (SIGPIPE
/// included) stays so. (glibc's posix_spawn, which starts sharelink here,
/// leaves libc's internal signal 32 ignored: it is inherited too.)
#[test]
fn command_gets_the_signal_state_sharelink_was_started_with() {
    let sb = RunSandbox::new();
    const IGNORE: &[i32] = &[
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGPIPE,
        libc::SIGTSTP,
        libc::SIGCHLD,
    ];
    const BLOCK: &[i32] = &[libc::SIGUSR1, libc::SIGWINCH];
    for (ignore, block) in [(&[][..], &[][..]), (IGNORE, BLOCK)] {
        let without = command_signal_state(&sb, true, ignore, block);
        let with = command_signal_state(&sb, false, ignore, block);
        assert_eq!(with, without, "ignoring {ignore:?}, blocking {block:?}");
        assert_eq!(with.0, mask(block));
        assert_eq!(with.1 & mask(IGNORE), mask(ignore));
    }
}

/// `nohup sharelink run -- CMD`: the command keeps SIGHUP ignored, so a
/// hang-up forwarded to it does not kill it; the SIGTERM sent after it
/// does (143, not 129). Signals are forwarded in order, lowest first.
#[test]
fn nohup_keeps_the_command_alive() {
    let modes: &[Mode] = if require_root("nohup_keeps_the_command_alive (as PID 1)") {
        &[Mode::Pid1, Mode::Subreaper]
    } else {
        &[Mode::Subreaper]
    };
    let sb = RunSandbox::new();
    for &mode in modes {
        let ready = sb.path(&format!("nohup-ready-{mode:?}"));
        let script = format!("touch {}; exec sleep 1000", ready.display());
        let inner = sb.command(mode, &[], &sh(&script));
        let mut c = Command::new("nohup");
        c.default_signals();
        c.arg(inner.get_program()).args(inner.get_args());
        prepare(&mut c);
        let r = Running::start(c, mode);
        wait_file(&ready);
        let pid = r.sharelink_pid();
        kill(pid, libc::SIGHUP);
        kill(pid, libc::SIGTERM);
        let o = r.finish();
        assert_eq!(o.code, 128 + libc::SIGTERM, "{mode:?}: {o:?}");
        assert!(o.stderr.contains("forwarding SIGHUP"), "{o:?}");
    }
}

// ---------------------------------------------------------------------------
// --user

/// `--user` in a private mount namespace whose /etc/passwd and /etc/group
/// are the test's, verified by the command's own `id`.
#[test]
fn user_switch_is_seen_by_id() {
    if !require_root("user_switch_is_seen_by_id") {
        return;
    }
    let sb = RunSandbox::new();
    let passwd = sb.script(
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\n\
         slapp:x:4242:4243:test user:/home/slapp:/bin/sh\n",
    );
    let group = sb.script(
        "group",
        "root:x:0:\n\
         slapp:x:4243:\n\
         slshare:x:4244:other,slapp\n\
         slother:x:4245:other\n",
    );
    let report = "echo \"$(id -u) $(id -g) $(id -G) $HOME\"";
    let cases: [(&str, &str); 7] = [
        ("slapp", "4242 4243 4243,4244 /home/slapp"),
        ("4242", "4242 4243 4243,4244 /home/slapp"),
        ("slapp:slother", "4242 4245 4243,4244,4245 /home/slapp"),
        ("slapp:4300", "4242 4300 4243,4244,4300 /home/slapp"),
        ("4242:4244", "4242 4244 4243,4244 /home/slapp"),
        ("5000", "5000 0 0 /"),
        ("5000:slshare", "5000 4244 4244 /"),
    ];
    for (spec, expect) in cases {
        let mut c = Command::new("unshare");
        c.default_signals();
        c.args(["--mount", "--pid", "--fork", "--mount-proc", "sh", "-c"])
            .arg("mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group && shift 2 && exec \"$@\"")
            .args(["sh", &passwd, &group, bin(), "--config"])
            .arg(sb.path("sharelink.toml"))
            .args(["run", "--user", spec, "--", "sh", "-c", report]);
        prepare(&mut c);
        let o = Running::start(c, Mode::Pid1).finish();
        assert_eq!(o.code, 0, "{spec}: {o:?}");
        let mut f: Vec<String> = o.stdout.split_whitespace().map(str::to_owned).collect();
        // uid, gid, then the groups (any order), then HOME.
        let home = f.pop().unwrap();
        let mut groups: Vec<u32> = f[2..].iter().map(|g| g.parse().unwrap()).collect();
        groups.sort();
        groups.dedup();
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        let got = format!("{} {} {} {home}", f[0], f[1], groups.join(","));
        assert_eq!(got, expect, "{spec}: {o:?}");
    }
}

/// The real system's `nobody`, from `run.user` in the config file.
#[test]
fn run_user_from_config() {
    if !require_root("run_user_from_config") {
        return;
    }
    let sb = RunSandbox::new();
    let cfg = sb.path("sharelink.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[run]\nuser = \"nobody\"\n");
    std::fs::write(&cfg, text).unwrap();
    let o = sb.run(Mode::Subreaper, &[], &sh("id -un; id -u"));
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "nobody\n65534\n", "{o:?}");
}

#[test]
fn unknown_user_is_a_config_error() {
    let sb = RunSandbox::new();
    let marker = sb.path("ran");
    let o = sb.run(
        Mode::Subreaper,
        &["--user", "sharelink-no-such-user"],
        &sh(&format!("touch {}", marker.display())),
    );
    assert_eq!(o.code, 78, "{o:?}");
    assert!(
        o.stderr.contains("sharelink-no-such-user") && o.stderr.contains("/etc/passwd"),
        "{o:?}"
    );
    assert!(!marker.exists(), "the command must not run");
}

/// An empty command name is "not found" (127), as in a shell; searching
/// PATH for it would try to run a directory.
#[test]
fn an_empty_command_name_is_not_found() {
    let sb = RunSandbox::new();
    let o = sb.run(Mode::Subreaper, &[], &[""]);
    assert_eq!(o.code, 127, "{o:?}");
    assert!(o.stderr.contains("empty"), "{o:?}");
}
