//! The latency rig (`tests/tools/latencyfs`) from tests: a passthrough FUSE
//! filesystem that adds a delay to every operation and can refuse
//! operations the way an SMB share does. Mount it inside a private mount
//! namespace ([`super::in_private_mount_ns`]); it unmounts on drop, and the
//! daemon also unmounts and exits by itself when the test process ends
//! (`--watch-pid`), so nothing is left running after a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The rig's crate, beside the project's own.
pub fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/latencyfs")
}

/// The rig's binary: `$LATENCYFS_BIN`, else built (once per process) with
/// `cargo build --release --locked` in its own target directory
/// (`.ci/install-deps` builds it beforehand, so this is a no-op in CI).
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("LATENCYFS_BIN") {
            return PathBuf::from(p);
        }
        let dir = crate_dir();
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "--release", "--locked", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(dir.join("target"))
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run cargo build for latencyfs");
        assert!(
            out.status.success(),
            "building latencyfs failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("target/release/latencyfs")
    })
    .clone()
}

pub struct LatencyFs {
    pub backing: PathBuf,
    pub mnt: PathBuf,
}

impl LatencyFs {
    /// Mount `backing` at `mnt` (both created) with rig options such as
    /// `["--delay-ms", "2", "--deny", "link,xattr"]`; returns once live.
    pub fn mount(backing: &Path, mnt: &Path, opts: &[&str]) -> LatencyFs {
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        let out = Command::new(bin())
            .arg("mount")
            .arg(backing)
            .arg(mnt)
            .args(opts)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "latencyfs mount failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        LatencyFs {
            backing: backing.to_path_buf(),
            mnt: mnt.to_path_buf(),
        }
    }

    /// Requests served so far, by operation (`lookup`, `write`, …), plus
    /// `total`, `peak_in_flight` and `busy_ms`; `reset` zeroes them
    /// afterwards.
    pub fn stats(&self, reset: bool) -> BTreeMap<String, u64> {
        let mut c = Command::new(bin());
        c.arg("stats").arg(&self.mnt);
        if reset {
            c.arg("--reset");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for LatencyFs {
    fn drop(&mut self) {
        let ok = Command::new(bin())
            .arg("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new(bin())
                .args(["umount", "--lazy"])
                .arg(&self.mnt)
                .status();
        }
    }
}
