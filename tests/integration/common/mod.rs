//! Shared test support: the real binary, trees with content hashes, and
//! private mount namespaces for tests that need real filesystems.
//!
//! A privileged test calls [`in_private_mount_ns`] first. Outside the
//! namespace it re-runs *this one test* under `unshare -m --propagation
//! private` and returns `false` (the caller returns); inside it returns
//! `true` and the test may mount tmpfs, overlayfs, bindfs and read-only
//! binds freely: they vanish with the namespace.
#![allow(dead_code)]

pub mod latencyfs;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_sharelink");
const NS_ENV: &str = "SHARELINK_TEST_IN_NS";

pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Root is needed for mounts and PID namespaces. Outside CI a non-root run
/// skips loudly; in CI (`CI=true`) it fails.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if is_ci() {
        panic!("{test}: needs root (mounts / namespaces) and CI=true forbids skipping");
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: needs root for mount namespaces; run as root (CI does) !!!!!\n"
    );
    false
}

/// See the module docs. `path` is the test's path from [`test_path!`]
/// (`integration::module::name`): the namespace runs exactly that test.
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

/// A helper program built from examples/NAME.rs. A plain `cargo test`
/// builds examples; a run filtered with `--test` does not, so build it then.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("examples").join(name);
    // Always asked (a no-op when up to date): a binary left by an older
    // checkout must not stand in for the current one.
    let s = Command::new(env!("CARGO"))
        .args(["build", "-q", "--example", name, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(s.success(), "cargo build --example {name} failed");
    p
}

pub fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn mount_tmpfs(at: &Path, size: &str) {
    fs::create_dir_all(at).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size={size} tmpfs '{}'",
        at.display()
    ));
}

/// An overlay like a container's root: `lower` is the image layer, the
/// result at `merged`. Renaming a lower-layer directory gives EXDEV.
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

/// A sandbox: a tmpfs holding app and share dirs, plus a config file.
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub app: PathBuf,
    pub share: PathBuf,
    pub config: PathBuf,
}

impl Sandbox {
    /// Plain directories (no mounts): `require_mount = false`.
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

    pub fn write_config(&self, require_mount: bool, links: &str) {
        fs::write(
            &self.config,
            format!(
                "app_root = {:?}\nshare_root = {:?}\nrequire_mount = {require_mount}\n\n[links]\n{links}\n",
                self.app, self.share
            ),
        )
        .unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config);
        c.env_remove("SHARELINK_LOG").env_remove("SHARELINK_CONFIG");
        c
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd().args(args).output().unwrap()
    }
}

pub fn code(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
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

/// One entry of a tree, as compared across copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File {
        hash: u64,
        len: u64,
        mode: u32,
    },
    Symlink(PathBuf),
    /// A FIFO, socket or device node, by kind.
    Special(&'static str),
}

impl Node {
    /// Same content: bytes for files (modes aside), target for symlinks.
    pub fn same_content(&self, other: &Node) -> bool {
        match (self, other) {
            (
                Node::File { hash, len, .. },
                Node::File {
                    hash: h, len: l, ..
                },
            ) => hash == h && len == l,
            (a, b) => a == b,
        }
    }
}

/// Every entry below `root` (relative path → node), never following
/// symlinks. Modes are kept so copies can be checked for them too.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    for e in fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        let m = fs::symlink_metadata(e.path()).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let ft = m.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink(fs::read_link(e.path()).unwrap())
        } else if m.is_dir() {
            walk(root, &r, out);
            Node::Dir
        } else if ft.is_fifo() {
            Node::Special("fifo")
        } else if ft.is_socket() {
            Node::Special("socket")
        } else if ft.is_char_device() || ft.is_block_device() {
            Node::Special("device")
        } else {
            let mut h: u64 = 0xcbf29ce484222325;
            let mut buf = vec![0u8; 1 << 16];
            let mut f = fs::File::open(e.path()).unwrap();
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                for b in &buf[..n] {
                    h ^= *b as u64;
                    h = h.wrapping_mul(0x100000001b3);
                }
            }
            Node::File {
                hash: h,
                len: m.len(),
                mode: m.mode() & 0o7777,
            }
        };
        out.insert(r, node);
    }
}

/// Ignore modes (for shares that refuse chmod).
pub fn without_modes(t: &BTreeMap<PathBuf, Node>) -> BTreeMap<PathBuf, Node> {
    t.iter()
        .map(|(k, v)| {
            let v = match v {
                Node::File { hash, len, .. } => Node::File {
                    hash: *hash,
                    len: *len,
                    mode: 0,
                },
                o => o.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// A mixed tree: nested and empty directories, symlinks (relative,
/// absolute, dangling), files from empty to `big` bytes, odd modes.
/// Deterministic for a given `seed`. Returns the number of files.
pub fn make_tree(root: &Path, files: usize, big: usize, seed: u64) -> usize {
    fs::create_dir_all(root).unwrap();
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
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

pub fn umount(at: &Path) {
    sh(&format!("umount '{}'", at.display()));
}

/// Poll `cond` until it holds; panic with `what` after `limit`.
#[track_caller]
pub fn wait_for(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A snapshot with the given relative directories (e.g. `dirs` entries
/// sharelink created) taken out; each must have been there as a directory.
#[track_caller]
pub fn without_dirs(mut t: BTreeMap<PathBuf, Node>, dirs: &[&str]) -> BTreeMap<PathBuf, Node> {
    for d in dirs {
        assert_eq!(t.remove(Path::new(d)), Some(Node::Dir), "dir {d}");
    }
    t
}

/// Entries of `dir` whose names contain `needle` (e.g. leftover
/// `.x.sharelink-staging` directories or temporary links).
pub fn entries_containing(dir: &Path, needle: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(needle))
        .collect()
}
