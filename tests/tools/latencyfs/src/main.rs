//! latencyfs: a passthrough FUSE filesystem that adds a fixed delay to every
//! operation, a stand-in for a network share (Azure Files over SMB costs a
//! round trip per metadata and data operation). It can also refuse
//! operations the way SMB does and inject faults. See README.md.
//!
//!   latencyfs mount BACKING MNT [OPTIONS]   start in the background; returns once MNT is live
//!   latencyfs serve BACKING MNT [OPTIONS]   the same in the foreground
//!   latencyfs umount MNT [--lazy]           unmount and wait for the daemon to exit
//!   latencyfs stats MNT [--reset]           operation counts so far (and zero them)
//!   latencyfs tunables MNT [--max-background N] [--congestion-threshold N]

mod fs;
mod policy;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::MountOption;

const USAGE: &str = "\
usage:
  latencyfs mount BACKING MNT [OPTIONS]   start in the background; returns once MNT is live
  latencyfs serve BACKING MNT [OPTIONS]   the same in the foreground
  latencyfs umount MNT [--lazy]           unmount and wait for the daemon to exit
  latencyfs stats MNT [--reset]           per-operation counts, peak requests in flight, busy time
  latencyfs tunables MNT [--max-background N] [--congestion-threshold N]

options:
  --delay-ms F            added to every operation (float; default 0)
  --threads N             worker threads, i.e. most requests served at once (default 64)
  --deny LIST             refuse ops as SMB does: link,xattr,mknod,chmod,chown,utimes,symlink,rename2
                          (each NAME or NAME=ERRNO to override the errno)
  --enospc-after BYTES    writes fail with ENOSPC once this many bytes were written in all
  --fail-op OP:N:ERRNO    the N-th call of OP fails with ERRNO (repeatable)
  --attr-timeout S        kernel attribute/entry cache timeout, seconds (default 1, like cifs actimeo)
  --writeback-cache       kernel caches writes and flushes them in the background
  --case-insensitive      names match whatever their case, kept as first written (as on SMB)
  --delete-pending        an unlinked file still open keeps a name until its last close (SMB)
  --release-lag-ms F      RELEASE (the close the kernel sends after close(2) returned) F ms late
  --max-write BYTES       largest single WRITE request (default 1 MiB; kernel caps it)
  --max-background N      FUSE max_background (default 12, the kernel's default)
  --congestion-threshold N  FUSE congestion_threshold (default 9, the kernel's default)
  --watch-pid PID         unmount and exit when PID exits
  --log FILE              (mount) the daemon's stderr goes here (default: discarded once live)";

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("latencyfs: {msg}");
    exit(2)
}

struct Args {
    backing: PathBuf,
    mnt: PathBuf,
    delay_ms: f64,
    threads: usize,
    deny: Vec<String>,
    enospc_after: Option<u64>,
    fail: Vec<String>,
    attr_timeout: f64,
    writeback_cache: bool,
    case_insensitive: bool,
    delete_pending: bool,
    release_lag_ms: f64,
    max_write: u32,
    max_background: u16,
    congestion_threshold: u16,
    watch_pid: Option<i32>,
    log: Option<PathBuf>,
}

fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    let v = v.unwrap_or_else(|| die(format!("{flag} needs a value")));
    v.parse()
        .unwrap_or_else(|_| die(format!("{flag}: bad value {v:?}")))
}

fn parse_serve_args(raw: &[String]) -> Args {
    let mut pos = Vec::new();
    let mut a = Args {
        backing: PathBuf::new(),
        mnt: PathBuf::new(),
        delay_ms: 0.0,
        threads: 64,
        deny: Vec::new(),
        enospc_after: None,
        fail: Vec::new(),
        attr_timeout: 1.0,
        writeback_cache: false,
        case_insensitive: false,
        delete_pending: false,
        release_lag_ms: 0.0,
        max_write: 1 << 20,
        max_background: 12,
        congestion_threshold: 9,
        watch_pid: None,
        log: None,
    };
    let mut it = raw.iter().cloned();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut val = || inline.clone().or_else(|| it.next());
        match flag.as_str() {
            "--delay-ms" => a.delay_ms = num(&flag, val()),
            "--threads" => a.threads = num(&flag, val()),
            "--deny" => a
                .deny
                .push(val().unwrap_or_else(|| die("--deny needs a list"))),
            "--enospc-after" => a.enospc_after = Some(num(&flag, val())),
            "--fail-op" => a
                .fail
                .push(val().unwrap_or_else(|| die("--fail-op needs a value"))),
            "--attr-timeout" => a.attr_timeout = num(&flag, val()),
            "--writeback-cache" => a.writeback_cache = true,
            "--case-insensitive" => a.case_insensitive = true,
            "--delete-pending" => a.delete_pending = true,
            "--release-lag-ms" => a.release_lag_ms = num(&flag, val()),
            "--max-write" => a.max_write = num(&flag, val()),
            "--max-background" => a.max_background = num(&flag, val()),
            "--congestion-threshold" => a.congestion_threshold = num(&flag, val()),
            "--watch-pid" => a.watch_pid = Some(num(&flag, val())),
            "--log" => a.log = Some(PathBuf::from(val().unwrap_or_else(|| die("--log")))),
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0)
            }
            f if f.starts_with('-') => die(format!("unknown option {f}\n{USAGE}")),
            _ => pos.push(arg),
        }
    }
    let [backing, mnt] = &pos[..] else {
        die(format!("want BACKING MNT\n{USAGE}"))
    };
    let canon = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|e| die(format!("{p}: {e}")));
    a.backing = canon(backing);
    a.mnt = canon(mnt);
    if !(a.delay_ms >= 0.0 && a.delay_ms.is_finite()) {
        die("--delay-ms must be >= 0");
    }
    a
}

/// The daemon, in the foreground until MNT is unmounted.
fn serve(a: Args) {
    let mut policy = policy::Policy::new(Duration::from_secs_f64(a.delay_ms / 1000.0));
    for d in &a.deny {
        policy.add_deny_list(d).unwrap_or_else(|e| die(e));
    }
    for f in &a.fail {
        policy.add_fail(f).unwrap_or_else(|e| die(e));
    }
    if let Some(b) = a.enospc_after {
        policy.set_enospc_after(b);
    }
    // Modes arrive already masked by the kernel; creating must not mask again.
    unsafe { libc::umask(0) };
    // Stats are asked for with SIGUSR1 (SIGUSR2: and reset): block them in
    // every thread and take them on one.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let deny = policy.deny_summary();
    let fs = fs::LatencyFs::new(
        &a.backing,
        fs::Options {
            policy,
            ttl: Duration::from_secs_f64(a.attr_timeout),
            threads: a.threads,
            writeback_cache: a.writeback_cache,
            case_insensitive: a.case_insensitive,
            delete_pending: a.delete_pending,
            release_lag: Duration::from_secs_f64(a.release_lag_ms.max(0.0) / 1000.0),
            max_write: a.max_write,
            max_background: a.max_background,
            congestion_threshold: a.congestion_threshold,
        },
    )
    .unwrap_or_else(|e| die(format!("{}: {e}", a.backing.display())));
    let core = fs.core();
    {
        let core = core.clone();
        std::thread::spawn(move || loop {
            let mut sig = 0;
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                write_stats(&core, sig == libc::SIGUSR2);
            }
        });
    }
    if let Some(pid) = a.watch_pid {
        let mnt = a.mnt.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if !alive(pid) {
                eprintln!("latencyfs: watched pid {pid} is gone; unmounting");
                let c = CString::new(mnt.as_os_str().as_bytes()).unwrap();
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                exit(0);
            }
        });
    }
    let opts = [
        MountOption::FSName(format!("latencyfs:{}", std::process::id())),
        MountOption::Subtype("latencyfs".into()),
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::RW,
    ];
    eprintln!(
        "latencyfs: {} on {} delay {} ms, {} threads, deny [{}]",
        a.backing.display(),
        a.mnt.display(),
        a.delay_ms,
        a.threads,
        deny
    );
    let mut session = fuser::Session::new(fs, &a.mnt, &opts)
        .unwrap_or_else(|e| die(format!("mount {}: {e}", a.mnt.display())));
    if let Err(e) = session.run() {
        die(format!("session: {e}"));
    }
    eprintln!("latencyfs: unmounted\n{}", core.policy.report(false));
    // Leave without joining the workers: nothing they hold needs a flush.
    exit(0)
}

fn stats_file(pid: i32) -> PathBuf {
    PathBuf::from(format!("/tmp/latencyfs.{pid}.stats"))
}

fn write_stats(core: &Arc<fs::Core>, reset: bool) {
    let path = stats_file(std::process::id() as i32);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, core.policy.report(reset)).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

fn alive(pid: i32) -> bool {
    if unsafe { libc::kill(pid, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    }
    // A zombie is gone for our purposes, but a leader that exited while
    // other threads of the daemon still run shows as a zombie too, and
    // those threads still hold the backing directory open.
    let zombie = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => return false,
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    !zombie || threads > 1
}

/// The latencyfs mount at `mnt` in this mount namespace: (daemon pid, major:minor).
fn find_mount(mnt: &Path) -> Option<(i32, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.as_os_str().as_bytes();
    // The last match wins: mounts stack.
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        let (point, fstype, source) = (f.get(4)?, f.get(dash + 1)?, f.get(dash + 2)?);
        if unescape(point).as_slice() != want || !fstype.starts_with("fuse") {
            return None;
        }
        let pid = source.strip_prefix("latencyfs:")?.parse().ok()?;
        Some((pid, f.get(2)?.to_string()))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn canon_mnt(raw: &[String]) -> (PathBuf, Vec<String>) {
    let (pos, flags): (Vec<String>, Vec<String>) =
        raw.iter().cloned().partition(|a| !a.starts_with('-'));
    let [mnt] = &pos[..] else {
        die(format!("want MNT\n{USAGE}"))
    };
    let p = std::fs::canonicalize(mnt).unwrap_or_else(|e| die(format!("{mnt}: {e}")));
    (p, flags)
}

/// Start `serve` detached and return once the mount is live.
fn mount(raw: &[String]) {
    let a = parse_serve_args(raw);
    let log = a.log.clone().unwrap_or_else(|| {
        PathBuf::from(format!("/tmp/latencyfs.mount.{}.log", std::process::id()))
    });
    let logf =
        std::fs::File::create(&log).unwrap_or_else(|e| die(format!("{}: {e}", log.display())));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("serve").args(raw);
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| die(format!("spawn: {e}")));
    let pid = child.id() as i32;
    let t0 = Instant::now();
    loop {
        if let Some((p, _)) = find_mount(&a.mnt) {
            if p == pid {
                break;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            die(format!("daemon exited ({st}) before mounting:\n{text}"));
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            die("mount did not appear within 15 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if a.log.is_none() {
        let _ = std::fs::remove_file(&log);
    }
    println!("{pid}");
}

fn umount(raw: &[String]) {
    let (mnt, flags) = canon_mnt(raw);
    let lazy = flags.iter().any(|f| f == "--lazy" || f == "-l");
    let Some((pid, _)) = find_mount(&mnt) else {
        die(format!("{}: no latencyfs mounted there", mnt.display()))
    };
    let c = CString::new(mnt.as_os_str().as_bytes()).unwrap();
    let flag = if lazy { libc::MNT_DETACH } else { 0 };
    if unsafe { libc::umount2(c.as_ptr(), flag) } != 0 {
        let e = std::io::Error::last_os_error();
        // Not root: the setuid helper may unmount.
        let ok = e.raw_os_error() == Some(libc::EPERM)
            && ["fusermount3", "fusermount"].iter().any(|b| {
                let mut cmd = Command::new(b);
                cmd.arg("-u");
                if lazy {
                    cmd.arg("-z");
                }
                cmd.arg(&mnt).status().map(|s| s.success()).unwrap_or(false)
            });
        if !ok {
            die(format!("umount {}: {e}", mnt.display()));
        }
    }
    let t0 = Instant::now();
    while alive(pid) {
        if t0.elapsed() > Duration::from_secs(10) {
            die(format!("daemon {pid} still running 10 s after unmount"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_file(stats_file(pid));
}

fn stats(raw: &[String]) {
    let (mnt, flags) = canon_mnt(raw);
    let reset = flags.iter().any(|f| f == "--reset");
    let Some((pid, _)) = find_mount(&mnt) else {
        die(format!("{}: no latencyfs mounted there", mnt.display()))
    };
    let path = stats_file(pid);
    let _ = std::fs::remove_file(&path);
    let sig = if reset { libc::SIGUSR2 } else { libc::SIGUSR1 };
    if unsafe { libc::kill(pid, sig) } != 0 {
        die(format!("signal {pid}: {}", std::io::Error::last_os_error()));
    }
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > Duration::from_secs(5) {
            die("no stats from the daemon within 5 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    print!("{}", std::fs::read_to_string(&path).unwrap_or_default());
    let _ = std::fs::remove_file(&path);
}

/// The kernel's per-connection knobs: /sys/fs/fuse/connections/<dev>/.
fn tunables(raw: &[String]) {
    let (mnt, flags) = canon_mnt(raw);
    let dev = std::fs::metadata(&mnt)
        .map(|m| std::os::linux::fs::MetadataExt::st_dev(&m))
        .unwrap_or_else(|e| die(format!("{}: {e}", mnt.display())));
    let minor = libc::minor(dev);
    let dir = PathBuf::from(format!("/sys/fs/fuse/connections/{minor}"));
    if !dir.exists() {
        die(format!(
            "{} missing: mount fusectl (mount -t fusectl none /sys/fs/fuse/connections)",
            dir.display()
        ));
    }
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        let (f, v) = match f.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => (
                f.clone(),
                it.next()
                    .cloned()
                    .unwrap_or_else(|| die(format!("{f} needs a value"))),
            ),
        };
        let file = match f.as_str() {
            "--max-background" => "max_background",
            "--congestion-threshold" => "congestion_threshold",
            _ => die(format!("unknown option {f}")),
        };
        std::fs::write(dir.join(file), format!("{v}\n"))
            .unwrap_or_else(|e| die(format!("{}: {e}", dir.join(file).display())));
    }
    for k in ["max_background", "congestion_threshold", "waiting"] {
        let v = std::fs::read_to_string(dir.join(k)).unwrap_or_default();
        println!("{k} {}", v.trim());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        die(USAGE)
    };
    match cmd.as_str() {
        "serve" => serve(parse_serve_args(rest)),
        "mount" => mount(rest),
        "umount" | "unmount" => umount(rest),
        "stats" => stats(rest),
        "tunables" => tunables(rest),
        "-h" | "--help" | "help" => println!("{USAGE}"),
        _ => die(format!("unknown command {cmd}\n{USAGE}")),
    }
}
