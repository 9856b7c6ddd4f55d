//! What the integration tests share: the binary under test and how to run
//! it, exit codes, the skip rule, private mount namespaces and mounts,
//! trees compared byte for byte, leftovers, seeds, and the figures for
//! docs/reliability.md.
//!
//! Skips: a test that cannot run here (not root, no Docker, a tool
//! missing) says so loudly and passes, except with `CI=true`, where it
//! fails: CI must run everything ([`skip_or_fail`]).
//!
//! A privileged test starts with `if !in_private_mount_ns!("its_name") {
//! return; }`. Outside the namespace this re-runs *that one test* under
//! `unshare -m --propagation private` and returns `false`; inside it
//! returns `true` and the test may mount tmpfs, overlayfs, bindfs and
//! read-only binds freely: they vanish with the namespace.

pub mod latencyfs;
pub mod scripts;

/// The library items the tests use, all named here: when one moves in
/// src/, this is the one place to follow it.
pub mod api {
    pub use sharelink::config::{self, Overrides};
    pub use sharelink::failpoint::ENABLED as FAILPOINTS_ENABLED;
    pub use sharelink::failpoint::NAMES as FAILPOINTS;
    pub use sharelink::owner_file_of;
}

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The binary under test

/// The binary under test: `SHARELINK_TEST_BIN` points the suite at another
/// build (e.g. the static musl release binary; the crash tests then need
/// it built with `--features failpoints`).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SHARELINK_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sharelink").into())
    })
}

/// Children start with every signal at its default disposition and none
/// blocked, whatever the test run itself was started with (`nohup` ignores
/// SIGHUP, some CI agents SIGINT, and ignored dispositions survive
/// `exec`): what a test proves about signals must not depend on that.
pub trait DefaultSignals {
    fn default_signals(&mut self) -> &mut Self;
}

impl DefaultSignals for Command {
    fn default_signals(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: signal and sigprocmask are async-signal-safe.
        unsafe {
            self.pre_exec(|| {
                for sig in 1..libc::SIGRTMIN() {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::signal(sig, libc::SIG_DFL);
                    }
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            })
        }
    }
}

/// `sharelink --config CONFIG`, with none of its knobs inherited from the
/// environment the tests run in, and default signal dispositions.
pub fn sharelink(config: &Path) -> Command {
    let mut c = Command::new(bin());
    c.default_signals();
    c.arg("--config").arg(config);
    for v in [
        "SHARELINK_LOG",
        "SHARELINK_CONFIG",
        "SHARELINK_APP_ROOT",
        "SHARELINK_SHARE_ROOT",
        "SHARELINK_REQUIRE_MOUNT",
        "SHARELINK_LOG_FORMAT",
        "SHARELINK_FAILPOINT",
        "SHARELINK_FAILPOINT_LOG",
        "SHARELINK_LOCK_LEASE",
    ] {
        c.env_remove(v);
    }
    c
}

/// A helper program of the tests (tests/programs/NAME.rs, declared as an
/// example in Cargo.toml). A plain `cargo test` builds it; a filtered run
/// (`--test integration`) does not, so it is built here (a no-op when up
/// to date: a binary left by an older checkout must not stand in for it).
pub fn program(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let s = Command::new(env!("CARGO"))
        .args(["build", "-q", "--example", name, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(s.success(), "cargo build --example {name} failed");
    profile_dir.join("examples").join(name)
}

/// The text of a `config` file: roots, `extra` top-level lines, links.
pub fn config_text(
    app_root: &Path,
    share_root: &Path,
    require_mount: bool,
    extra: &str,
    links: &str,
) -> String {
    format!(
        "app_root = {app_root:?}\nshare_root = {share_root:?}\nrequire_mount = {require_mount}\n{extra}\n[links]\n{links}\n"
    )
}

/// A temporary directory holding `app/`, `share/` and a config for them
/// (plain directories: `require_mount = false` until told otherwise).
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub app: PathBuf,
    pub share: PathBuf,
    pub config: PathBuf,
}

impl Sandbox {
    pub fn new(links: &str) -> Sandbox {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        let share = root.path().join("share");
        fs::create_dir_all(&app).unwrap();
        fs::create_dir_all(&share).unwrap();
        let config = root.path().join("sharelink.toml");
        let sb = Sandbox {
            root,
            app,
            share,
            config,
        };
        sb.write_config(false, links);
        sb
    }

    /// A path in the sandbox's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn write_config(&self, require_mount: bool, links: &str) {
        self.write_config_with(require_mount, "", links);
    }

    /// With `extra` top-level settings (e.g. `mount_timeout = "10s"`).
    pub fn write_config_with(&self, require_mount: bool, extra: &str, links: &str) {
        let text = config_text(&self.app, &self.share, require_mount, extra, links);
        fs::write(&self.config, text).unwrap();
    }

    pub fn cmd(&self) -> Command {
        sharelink(&self.config)
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd().args(args).output().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Exit status and output

/// What an exit status can be read from: an [`ExitStatus`] or an [`Output`].
pub trait Status {
    fn status(&self) -> ExitStatus;
}

impl Status for ExitStatus {
    fn status(&self) -> ExitStatus {
        *self
    }
}

impl Status for Output {
    fn status(&self) -> ExitStatus {
        self.status
    }
}

/// The exit code as a shell reports it: 128 + N for death by signal N.
pub fn code(s: &impl Status) -> i32 {
    let s = s.status();
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Assert an exit code, showing the output when it is not.
#[track_caller]
pub fn expect_code(o: &Output, want: i32) {
    assert_eq!(
        code(o),
        want,
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

// ---------------------------------------------------------------------------
// Skips

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip `test` loudly, or fail when `CI=true`. `why`: what is missing;
/// `how`: what to run to make it run.
pub fn skip_or_fail(test: &str, why: &str, how: &str) {
    if in_ci() {
        panic!("{test}: CI=true but it cannot run: {why}");
    }
    let bar = "!".repeat(78);
    let msg = format!(
        "\n{bar}\n!!! SKIPPED: {test} (did NOT run)\n!!! {why}\n\
         !!! Run it with CI=true to make this a failure, or `{how}`.\n{bar}\n"
    );
    // Straight to the process's stderr: the harness captures `eprintln!`
    // of passing tests, and this must be seen.
    let _ = std::io::stderr().write_all(msg.as_bytes());
}

/// Whether tests that need root (mounts, PID namespaces) can run: root,
/// and `unshare` can make mount and PID namespaces. If not, a loud skip
/// (a failure under `CI=true`) and `false`.
pub fn require_root(test: &str) -> bool {
    static WHY_NOT: OnceLock<Option<String>> = OnceLock::new();
    let why_not = WHY_NOT.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Some("not running as root".into());
        }
        match Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--mount-proc", "true"])
            .stdin(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => None,
            Ok(s) => Some(format!(
                "`unshare --mount --pid --fork --mount-proc true`: {s}"
            )),
            Err(e) => Some(format!("cannot run unshare: {e}")),
        }
    });
    match why_not {
        None => true,
        Some(why) => {
            skip_or_fail(
                test,
                &format!("needs root and unshare (mount and PID namespaces): {why}"),
                "sudo -E cargo test --features failpoints",
            );
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Private mount namespaces

/// The path of test `$name` in this crate (`integration::module::name`),
/// for helpers that re-run it by name.
macro_rules! test_path {
    ($name:literal) => {
        concat!(module_path!(), "::", $name)
    };
}

/// `if !in_private_mount_ns!("this_test") { return; }`: see the module docs.
macro_rules! in_private_mount_ns {
    ($name:literal) => {
        $crate::support::in_private_mount_ns(test_path!($name))
    };
}

const NS_ENV: &str = "SHARELINK_TEST_IN_NS";

/// See the module docs. `path`: the test's path from [`test_path!`]; the
/// namespace runs exactly that test (`--exact module::name`).
pub fn in_private_mount_ns(path: &str) -> bool {
    let test = path.split_once("::").map_or(path, |(_krate, test)| test);
    // A test passing another test's name would re-run that one instead.
    if let Some(thread) = std::thread::current().name().filter(|n| *n != "main") {
        assert_eq!(
            thread, test,
            "in_private_mount_ns called with another test's name"
        );
    }
    if std::env::var_os(NS_ENV).is_some() {
        return true;
    }
    if !require_root(test) {
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(NS_ENV, "1")
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} failed in its mount namespace:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in its mount namespace:\n{text}"
    );
    false
}

// ---------------------------------------------------------------------------
// Processes

/// Run `cmd` with `sh -c`; panic with its output unless it succeeds.
pub fn sh(cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll `f` until it gives a value; panic naming `what` after `limit`.
#[track_caller]
pub fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Poll `cond` until it holds; panic naming `what` after `limit`.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    poll(what, limit, || cond().then_some(()))
}

/// Wait until process `pid` is stopped (e.g. at a `:stop` failpoint). A
/// process that exits instead (a zombie, since the test holds it) fails at
/// once; one that never stops fails after `limit` saying where it waits.
#[track_caller]
pub fn wait_stopped(pid: u32, limit: Duration) {
    // The state follows the command name, which may hold anything.
    let state = || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next()?.trim_start().chars().next())
    };
    let start = Instant::now();
    loop {
        match state() {
            Some('T') => return,
            Some('Z') | None => panic!("process {pid} exited before it stopped"),
            Some(other) if start.elapsed() > limit => {
                let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                let threads: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| {
                        d.flatten()
                            .map(|t| fs::read_to_string(t.path().join("wchan")).unwrap_or_default())
                            .collect()
                    })
                    .unwrap_or_default();
                panic!(
                    "process {pid} did not stop within {limit:?}: state {other}, waiting in {wchan:?}, threads in {threads:?}"
                );
            }
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Wait for `child` for at most `limit`; SIGKILL it (and fail) if it hangs.
pub fn wait_with_limit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (hang)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Mounts (inside a private mount namespace)

pub fn mount_tmpfs(at: &Path, size: &str) {
    fs::create_dir_all(at).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size={size} tmpfs '{}'",
        at.display()
    ));
}

/// An overlay like a container's root: `lower` is the image layer, the
/// result at `base/merged`. Renaming a lower-layer directory gives EXDEV.
pub fn mount_overlay(base: &Path, lower: &Path) -> PathBuf {
    let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    sh(&format!(
        "mount -t overlay overlay -o lowerdir='{}',upperdir='{}',workdir='{}' '{}'",
        lower.display(),
        upper.display(),
        work.display(),
        merged.display()
    ));
    merged
}

/// A `bindfs` view of `src` at `at`, with extra options (e.g.
/// `--chmod-deny --chown-deny`, which makes it refuse chmod/chown like an
/// SMB share without unix extensions).
pub fn mount_bindfs(src: &Path, at: &Path, opts: &str) {
    fs::create_dir_all(at).unwrap();
    sh(&format!(
        "bindfs {opts} '{}' '{}'",
        src.display(),
        at.display()
    ));
}

/// A read-only bind mount of `src` at `at`.
pub fn mount_ro_bind(src: &Path, at: &Path) {
    fs::create_dir_all(at).unwrap();
    sh(&format!(
        "mount --bind '{0}' '{1}' && mount -o remount,bind,ro '{1}'",
        src.display(),
        at.display()
    ));
}

/// Unmount `at`; it must be mounted and not busy.
pub fn umount(at: &Path) {
    sh(&format!("umount '{}'", at.display()));
}

/// Clean-up: unmount `at` if mounted, lazily (an open fd cannot block it).
pub fn umount_lazy(at: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(at)
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------
// Trees

/// One entry of a tree, as compared across copies. Regular files keep
/// their whole content, so a comparison is byte for byte (and, unlike
/// hashing in a debug build, fast: `==` on slices is `memcmp`).
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File {
        bytes: Vec<u8>,
        mode: u32,
    },
    Symlink(PathBuf),
    /// A FIFO, socket or device node, by kind.
    Special(&'static str),
}

/// Relative path → entry, for everything below some directory.
pub type Tree = BTreeMap<PathBuf, Node>;

impl Node {
    /// Same content: bytes for files (modes aside), target for symlinks.
    pub fn same_content(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::File { bytes: a, .. }, Node::File { bytes: b, .. }) => a == b,
            (a, b) => a == b,
        }
    }

    /// A short description for messages.
    pub fn brief(&self) -> String {
        match self {
            Node::Dir => "dir".into(),
            Node::File { bytes, mode } => format!("file of {} bytes mode {mode:o}", bytes.len()),
            Node::Symlink(t) => format!("symlink -> {}", t.display()),
            Node::Special(kind) => kind.to_string(),
        }
    }
}

/// Files as length, FNV-1a hash and mode, not as every byte.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir => write!(f, "Dir"),
            Node::File { bytes, mode } => {
                let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
                    (h ^ *b as u64).wrapping_mul(0x100000001b3)
                });
                write!(
                    f,
                    "File({} bytes, fnv {h:016x}, mode {mode:o})",
                    bytes.len()
                )
            }
            Node::Symlink(t) => write!(f, "Symlink({t:?})"),
            Node::Special(kind) => write!(f, "Special({kind})"),
        }
    }
}

fn special_kind(ft: fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "device"
    }
}

/// Every entry below `root` (relative path → node), never following
/// symlinks. Modes are kept so copies can be checked for them too.
pub fn snapshot(root: &Path) -> Tree {
    let mut out = Tree::new();
    snapshot_into(root, Path::new(""), &mut out);
    out
}

fn snapshot_into(root: &Path, rel: &Path, out: &mut Tree) {
    let dir = root.join(rel);
    let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for e in rd {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        let m = fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink(fs::read_link(e.path()).unwrap())
        } else if ft.is_dir() {
            snapshot_into(root, &r, out);
            Node::Dir
        } else if ft.is_file() {
            Node::File {
                bytes: fs::read(e.path()).unwrap(),
                mode: m.mode() & 0o7777,
            }
        } else {
            Node::Special(special_kind(ft))
        };
        out.insert(r, node);
    }
}

/// Metadata of `p`, not following a symlink; panics naming the path.
pub fn lmeta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (inode, mtime, mtime_nsec) of `p`, not following a symlink: equal
/// stamps mean nothing replaced or rewrote it.
pub fn stamp(p: &Path) -> (u64, i64, i64) {
    let m = lmeta(p);
    (m.ino(), m.mtime(), m.mtime_nsec())
}

/// Ignore modes (for shares that refuse chmod).
pub fn without_modes(t: &Tree) -> Tree {
    t.iter()
        .map(|(k, v)| {
            let v = match v {
                Node::File { bytes, .. } => Node::File {
                    bytes: bytes.clone(),
                    mode: 0,
                },
                o => o.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// A snapshot with the given relative directories (e.g. `dirs` entries
/// sharelink created) taken out; each must have been there as a directory.
#[track_caller]
pub fn without_dirs(mut t: Tree, dirs: &[&str]) -> Tree {
    for d in dirs {
        assert_eq!(t.remove(Path::new(d)), Some(Node::Dir), "dir {d}");
    }
    t
}

/// Differences between `want` and `got`, described (at most `limit`).
/// Returns (missing, differing, unexpected) counts and the descriptions.
pub fn diff(
    want: &Tree,
    got: &Tree,
    check_modes: bool,
    limit: usize,
) -> (usize, usize, usize, Vec<String>) {
    let (mut missing, mut differ, mut extra) = (0, 0, 0);
    let mut msgs = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => {
                missing += 1;
                if msgs.len() < limit {
                    msgs.push(format!("missing {}", k.display()));
                }
            }
            Some(g)
                if !(if check_modes {
                    w == g
                } else {
                    w.same_content(g)
                }) =>
            {
                differ += 1;
                if msgs.len() < limit {
                    msgs.push(format!(
                        "differs {}: want {}, got {}",
                        k.display(),
                        w.brief(),
                        g.brief()
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            extra += 1;
            if msgs.len() < limit {
                msgs.push(format!("unexpected {}", k.display()));
            }
        }
    }
    (missing, differ, extra, msgs)
}

/// Whether `path` holds `want` whole (regular files: same bytes; symlinks:
/// same target; directories: a directory). Never follows symlinks.
pub fn holds(path: &Path, want: &Node) -> bool {
    let Ok(m) = fs::symlink_metadata(path) else {
        return false;
    };
    let ft = m.file_type();
    match want {
        Node::Dir => ft.is_dir(),
        Node::Symlink(t) => ft.is_symlink() && fs::read_link(path).ok().as_ref() == Some(t),
        Node::File { bytes, .. } => {
            ft.is_file()
                && m.len() == bytes.len() as u64
                && fs::read(path).ok().as_ref() == Some(bytes)
        }
        Node::Special(kind) => {
            !ft.is_file() && !ft.is_dir() && !ft.is_symlink() && special_kind(ft) == *kind
        }
    }
}

/// A mixed tree: nested and empty directories, symlinks (relative,
/// absolute, dangling), files from empty to `big` bytes, odd modes.
/// Deterministic for a given `seed`. Returns the number of files.
pub fn make_tree(root: &Path, files: usize, big: usize, seed: u64) -> usize {
    fs::create_dir_all(root).unwrap();
    let mut rng = Rng(seed | 1);
    let mut next = || rng.next();
    fs::create_dir_all(root.join("empty/also_empty")).unwrap();
    for i in 0..files {
        let depth = (next() % 4) as usize;
        let mut dir = root.to_path_buf();
        for d in 0..depth {
            dir.push(format!("d{}_{}", d, next() % 5));
        }
        fs::create_dir_all(&dir).unwrap();
        let len = match next() % 10 {
            0 => 0,
            1 => big,
            _ => (next() % 5000) as usize,
        };
        let byte = (next() % 251) as u8;
        let content: Vec<u8> = (0..len).map(|j| byte.wrapping_add(j as u8)).collect();
        let p = dir.join(format!("f{i}.dat"));
        fs::write(&p, content).unwrap();
        if i % 7 == 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        }
        if i % 50 == 0 {
            std::os::unix::fs::symlink(format!("f{i}.dat"), dir.join(format!("l{i}"))).unwrap();
            std::os::unix::fs::symlink("/nonexistent/target", dir.join(format!("dangling{i}")))
                .unwrap();
        }
    }
    files
}

// ---------------------------------------------------------------------------
// What a run leaves behind

/// Names in `dir` (empty when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Names in `dir` that contain `needle` (e.g. leftover
/// `.x.sharelink-staging` directories or temporary links).
pub fn entries_containing(dir: &Path, needle: &str) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(needle))
        .collect()
}

/// Calls `f` for every entry below `root` (not following symlinks).
pub fn walk_names(root: &Path, f: &mut dyn FnMut(&Path, &str)) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let p = e.path();
        f(&p, &e.file_name().to_string_lossy());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_names(&p, f);
        }
    }
}

/// Complete set-aside copies for the share path `share_rel`
/// (`<share_root>/.sharelink/displaced/<share_rel>/<stamp>`), oldest
/// first; unfinished (`.partial`) ones are not included.
pub fn displaced(share_root: &Path, share_rel: &str) -> Vec<PathBuf> {
    let base = share_root.join(".sharelink/displaced").join(share_rel);
    let mut v: Vec<PathBuf> = names(&base)
        .into_iter()
        .filter(|n| !n.ends_with(".partial"))
        .map(|n| base.join(n))
        .collect();
    v.sort();
    v
}

/// What a finished run must not leave behind: staging directories,
/// partial displaced copies, lock directories (taken, `.new.`, `.break`),
/// temporary symlinks. Returns descriptions of what it found.
pub fn leftovers(app_root: &Path, share_root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    walk_names(share_root, &mut |p, name| {
        if name.starts_with('.') && name.ends_with(".sharelink-staging")
            || name.ends_with(".partial")
        {
            found.push(p.display().to_string());
        }
    });
    for n in names(&share_root.join(".sharelink/locks")) {
        found.push(format!("lock entry .sharelink/locks/{n}"));
    }
    walk_names(app_root, &mut |p, name| {
        if name.starts_with('.')
            && (name.contains(".sharelink-link.")
                || name.ends_with(".sharelink-staging")
                || name.ends_with(".sharelink-committed"))
        {
            found.push(p.display().to_string());
        }
    });
    found
}

// ---------------------------------------------------------------------------
// Randomness, knobs and figures

/// A xorshift generator: reproducible from a seed printed on failure.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, n) (near enough for tests).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed from `SHARELINK_TEST_SEED`, else from the clock; printed so a
/// failing run can be repeated. Odd, so it can seed an [`Rng`].
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("SHARELINK_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {s} (repeat with SHARELINK_TEST_SEED={s})");
    s | 1
}

/// A number from the environment (to run more trials by hand), else `default`.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Print a figure for docs/reliability.md and append it to
/// `$CARGO_TARGET_TMPDIR/reliability-figures.txt`.
pub fn report(line: &str) {
    eprintln!("RELIABILITY: {line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-figures.txt");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}
