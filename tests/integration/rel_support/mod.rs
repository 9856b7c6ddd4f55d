//! Helpers for the reliability tests (tests/reliability_*.rs): an
//! in-memory pristine copy of a tree to compare against byte for byte,
//! leftover checks, process helpers, and the figures the tests report.
//!
//! Kept apart from tests/common so that the two can grow independently.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sharelink");

/// One entry of a tree, with the whole content of regular files (so a
/// comparison is byte for byte, which is stronger than a hash and, unlike
/// hashing in a debug build, fast: `==` on slices is `memcmp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File { bytes: Vec<u8>, mode: u32 },
    Symlink(PathBuf),
    Other,
}

pub type Tree = BTreeMap<PathBuf, Entry>;

/// Every entry below `root`, never following symlinks.
pub fn load_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    load_into(root, Path::new(""), &mut out);
    out
}

fn load_into(root: &Path, rel: &Path, out: &mut Tree) {
    let dir = root.join(rel);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) => panic!("read_dir {}: {e}", dir.display()),
    };
    for e in rd {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        let m = fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let entry = if ft.is_symlink() {
            Entry::Symlink(fs::read_link(e.path()).unwrap())
        } else if ft.is_dir() {
            load_into(root, &r, out);
            Entry::Dir
        } else if ft.is_file() {
            Entry::File {
                bytes: fs::read(e.path()).unwrap(),
                mode: m.mode() & 0o7777,
            }
        } else {
            Entry::Other
        };
        out.insert(r, entry);
    }
}

/// Differences between `want` and `got`, described (at most `limit`).
/// Returns (missing, corrupt, extra) counts and the descriptions.
pub fn diff(
    want: &Tree,
    got: &Tree,
    check_modes: bool,
    limit: usize,
) -> (usize, usize, usize, Vec<String>) {
    let (mut missing, mut corrupt, mut extra) = (0, 0, 0);
    let mut msgs = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => {
                missing += 1;
                if msgs.len() < limit {
                    msgs.push(format!("missing {}", k.display()));
                }
            }
            Some(g) if !same(w, g, check_modes) => {
                corrupt += 1;
                if msgs.len() < limit {
                    msgs.push(format!(
                        "differs {}: want {}, got {}",
                        k.display(),
                        brief(w),
                        brief(g)
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
    (missing, corrupt, extra, msgs)
}

fn same(a: &Entry, b: &Entry, check_modes: bool) -> bool {
    match (a, b) {
        (Entry::File { bytes: x, mode: m }, Entry::File { bytes: y, mode: n }) => {
            x == y && (!check_modes || m == n)
        }
        _ => a == b,
    }
}

pub fn brief(e: &Entry) -> String {
    match e {
        Entry::Dir => "dir".into(),
        Entry::File { bytes, mode } => format!("file of {} bytes mode {mode:o}", bytes.len()),
        Entry::Symlink(t) => format!("symlink -> {}", t.display()),
        Entry::Other => "special file".into(),
    }
}

/// Whether `path` holds `want` whole (regular files: same bytes; symlinks:
/// same target; directories: a directory). Never follows symlinks.
pub fn holds(path: &Path, want: &Entry) -> bool {
    let Ok(m) = fs::symlink_metadata(path) else {
        return false;
    };
    match want {
        Entry::Dir => m.is_dir(),
        Entry::Symlink(t) => {
            m.file_type().is_symlink() && fs::read_link(path).ok().as_ref() == Some(t)
        }
        Entry::File { bytes, .. } => {
            m.file_type().is_file()
                && m.len() == bytes.len() as u64
                && fs::read(path).ok().as_ref() == Some(bytes)
        }
        Entry::Other => true,
    }
}

/// Entries of a directory, as names (empty when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
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

/// The real binary with a clean environment for its knobs.
pub fn sharelink(config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config);
    for v in [
        "SHARELINK_LOG",
        "SHARELINK_CONFIG",
        "SHARELINK_APP_ROOT",
        "SHARELINK_SHARE_ROOT",
        "SHARELINK_REQUIRE_MOUNT",
        "SHARELINK_LOG_FORMAT",
        "SHARELINK_FAILPOINT",
        "SHARELINK_LOCK_LEASE",
    ] {
        c.env_remove(v);
    }
    c
}

pub fn config_text(
    app_root: &Path,
    share_root: &Path,
    require_mount: bool,
    extra: &str,
    links: &str,
) -> String {
    format!(
        "app_root = {:?}\nshare_root = {:?}\nrequire_mount = {require_mount}\n{extra}\n[links]\n{links}\n",
        app_root, share_root
    )
}

pub fn exit_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
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

pub fn run_sh(cmd: &str) {
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

/// Unmount if mounted (lazily, so an open fd cannot block a test).
pub fn umount_quiet(at: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(at)
        .stderr(Stdio::null())
        .status();
}

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
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed from `SHARELINK_TEST_SEED`, else from the clock; printed so a
/// failing run can be repeated.
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

/// Print a figure for the README's reliability table and append it to
/// `$CARGO_TARGET_TMPDIR/reliability-figures.txt`.
pub fn report(line: &str) {
    eprintln!("RELIABILITY: {line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-figures.txt");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}
