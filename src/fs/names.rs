//! Names sharelink gives its own entries: hidden siblings of the entry they
//! belong to, built from its name's bytes and kept within NAME_MAX.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

const NAME_MAX: usize = 255;

/// `.<name>.<suffix>`, shortened with a hash of `name` when it would not
/// fit in NAME_MAX minus `room` bytes (left for the caller to append, such
/// as `.<pid>`). Distinct names give distinct results.
pub(crate) fn hidden(name: &OsStr, suffix: &str, room: usize) -> OsString {
    let n = name.as_bytes();
    let max = NAME_MAX - room;
    let mut out = Vec::with_capacity(n.len() + suffix.len() + 2);
    if n.len() + suffix.len() + 2 <= max {
        out.push(b'.');
        out.extend_from_slice(n);
    } else {
        // `.<prefix>~<hash>`: 1 + keep + 1 + 16 bytes, then `.<suffix>`.
        let keep = max - suffix.len() - 1 - 18;
        out.push(b'.');
        out.extend_from_slice(&n[..keep]);
        out.extend_from_slice(format!("~{:016x}", fnv1a(n)).as_bytes());
    }
    out.push(b'.');
    out.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(out)
}

/// [`hidden`] for the last component of `path`, as a sibling path.
pub(crate) fn sibling(path: &Path, suffix: &str, room: usize) -> PathBuf {
    path.with_file_name(hidden(path.file_name().unwrap_or_default(), suffix, room))
}

/// FNV-1a: a stable, dependency-free hash for shortening names and
/// spreading retries.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names_fit_and_stay_distinct() {
        assert_eq!(hidden(OsStr::new("data"), "x", 0), ".data.x");
        let long = "é".repeat(127);
        let a = hidden(OsStr::new(&long), "sharelink-staging", 0);
        assert!(a.len() <= 255, "{}", a.len());
        assert_ne!(
            a,
            hidden(OsStr::new(&"é".repeat(126)), "sharelink-staging", 0)
        );
        let b = hidden(OsStr::new(&"n".repeat(255)), "x", 11);
        assert!(b.len() <= 244);
        // Non-UTF-8 names that differ only in invalid bytes stay apart.
        let x = hidden(OsStr::from_bytes(b"d\xff"), "s", 0);
        let y = hidden(OsStr::from_bytes(b"d\xfe"), "s", 0);
        assert_ne!(x, y);
        assert_eq!(
            sibling(Path::new("/s/a/data"), "x", 0),
            Path::new("/s/a/.data.x")
        );
    }
}
