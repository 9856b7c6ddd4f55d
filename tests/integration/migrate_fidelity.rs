//! A migration keeps what `cp -a` keeps (compared side by side on the same
//! tree), and on a share that cannot hold some of it (SMB-like) keeps the
//! data, says once per kind what was lost, and counts it.

use crate::support::latencyfs::LatencyFs;
use crate::support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn lset_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setting {name} on {}: {} (the test needs a filesystem with xattrs, ACLs and capabilities)",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// The extended attributes a faithful copy keeps, by name.
fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(p);
    let mut names = vec![0u8; 4096];
    // SAFETY: buffer and length match.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let s = String::from_utf8_lossy(name).into_owned();
        if !(s.starts_with("user.")
            || s.starts_with("trusted.")
            || s == "security.capability"
            || s.starts_with("system.posix_acl"))
        {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: as above.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.insert(s, v);
        }
    }
    out
}

/// Everything `cp -a` keeps about an entry.
#[derive(Debug, PartialEq, Eq)]
struct Full {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    content: Option<u64>,
    target: Option<PathBuf>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry below `root`, plus the hard-link groups and how much of the
/// sparse file is allocated.
fn describe(root: &Path) -> (BTreeMap<PathBuf, Full>, BTreeSet<Vec<PathBuf>>, u64) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(r.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_char_device() {
                "char"
            } else {
                "file"
            };
            if kind == "file" && m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().push(r.clone());
            }
            let content = (kind == "file").then(|| {
                let bytes = fs::read(&p).unwrap();
                bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
                    (h ^ *b as u64).wrapping_mul(0x100000001b3)
                })
            });
            out.insert(
                r,
                Full {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if kind == "dir" { 0 } else { m.size() },
                    mtime: (m.mtime(), m.mtime_nsec()),
                    content,
                    target: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                    rdev: m.rdev(),
                    xattrs: xattrs(&p),
                },
            );
        }
    }
    let groups = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    let sparse = fs::metadata(root.join("sparse.img"))
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    (out, groups, sparse)
}

/// A tree with every kind and attribute `cp -a` keeps.
fn rich_tree(d: &Path) {
    fs::create_dir_all(d.join("deep/er")).unwrap();
    fs::create_dir_all(d.join("empty")).unwrap();
    fs::write(d.join("plain.txt"), "plain").unwrap();
    fs::write(d.join("deep/er/file"), vec![7u8; 100_000]).unwrap();
    fs::write(d.join("setuid"), "#!/bin/sh\n").unwrap();
    fs::write(d.join("capable"), "a binary with a capability").unwrap();
    fs::write(d.join("acl.txt"), "with an access ACL").unwrap();
    // Hard links: three names of one inode, in two directories.
    fs::write(d.join("linked"), "one inode, three names").unwrap();
    fs::hard_link(d.join("linked"), d.join("deep/linked-2")).unwrap();
    fs::hard_link(d.join("linked"), d.join("deep/er/linked-3")).unwrap();
    // Sparse: 64 MiB with two small extents.
    let f = fs::File::create(d.join("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"head", 0).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"middle", 32 << 20).unwrap();
    drop(f);
    std::os::unix::fs::symlink("plain.txt", d.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", d.join("dangling")).unwrap();
    sh(&format!("mkfifo '{}'", d.join("fifo").display()));
    for (name, mode, dev) in [
        ("socket", libc::S_IFSOCK | 0o644, 0),
        ("null-clone", libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
    ] {
        // SAFETY: valid path.
        let r = unsafe { libc::mknod(cpath(&d.join(name)).as_ptr(), mode, dev) };
        assert_eq!(r, 0, "mknod {name}: {}", std::io::Error::last_os_error());
    }
    // Owners, modes and times (nanoseconds), symlinks included.
    sh(&format!(
        "chown -h 1234:5678 '{0}/plain.txt' '{0}/rel-link' '{0}/deep' '{0}/fifo'",
        d.display()
    ));
    sh(&format!(
        "chmod 4755 '{0}/setuid' && chmod 2750 '{0}/deep' && chmod 0600 '{0}/plain.txt' && chmod 0700 '{0}/empty'",
        d.display()
    ));
    // Extended attributes, a file capability (after chown, which would
    // clear it), POSIX ACLs.
    lset_xattr(&d.join("plain.txt"), "user.comment", b"kept");
    lset_xattr(&d.join("deep"), "user.dir-note", b"on a directory");
    lset_xattr(&d.join("plain.txt"), "trusted.origin", b"root only");
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    lset_xattr(&d.join("capable"), "security.capability", &cap);
    let acl = |entries: &[(u16, u16, u32)]| {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    };
    let any = u32::MAX;
    let entries = [
        (0x01, 6, any),
        (0x02, 4, 1000),
        (0x04, 4, any),
        (0x10, 4, any),
        (0x20, 0, any),
    ];
    lset_xattr(
        &d.join("acl.txt"),
        "system.posix_acl_access",
        &acl(&entries),
    );
    lset_xattr(
        &d.join("deep/er"),
        "system.posix_acl_default",
        &acl(&entries),
    );
    // Times last: everything above moved them.
    sh(&format!(
        "touch -h -d '2021-03-04 05:06:07.123456789' '{0}/rel-link' '{0}/plain.txt' '{0}/fifo' && \
         touch -d '2019-01-02 03:04:05.5' '{0}/deep/er' '{0}/empty' '{0}/deep'",
        d.display()
    ));
}
#[test]
fn copy_keeps_what_cp_a_keeps() {
    if !in_private_mount_ns!("copy_keeps_what_cp_a_keeps") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (image, shares) = (root.path().join("image"), root.path().join("shares"));
    mount_tmpfs(&image, "256m");
    mount_tmpfs(&shares, "256m");
    rich_tree(&image.join("lower/data"));
    let merged = mount_overlay(&image.join("ovl"), &image.join("lower"));
    // cp -a of the same tree (as seen through the overlay, like sharelink).
    let cpa = shares.join("cp-a");
    fs::create_dir_all(&cpa).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(merged.join("data"))
        .arg(&cpa)
        .status()
        .unwrap();
    assert!(st.success());
    let want = describe(&cpa.join("data"));
    let share = shares.join("share");
    fs::create_dir_all(&share).unwrap();
    let cfg = root.path().join("sharelink.toml");
    fs::write(
        &cfg,
        config_text(&merged, &share, false, "", "\"data\" = \"data\""),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let o = sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert!(
        !stderr(&o).contains("WARN"),
        "a share that holds everything loses nothing: {}",
        stderr(&o)
    );
    let got = describe(&share.join("data"));
    for (p, w) in &want.0 {
        assert_eq!(got.0.get(p), Some(w), "{}", p.display());
    }
    assert_eq!(got.0.len(), want.0.len());
    assert_eq!(got.1, want.1, "hard-link groups");
    assert_eq!(got.1.len(), 1);
    assert!(
        got.2 < 1 << 20 && want.2 < 1 << 20,
        "sparse file allocated {} (cp -a: {})",
        got.2,
        want.2
    );
    assert_eq!(
        fs::read_link(merged.join("data")).unwrap(),
        share.join("data")
    );
}

/// What an Azure Files share does to a tree: no hard links, no xattrs, no
/// special files, no chmod or chown. The data arrives whole; each kind of
/// loss is one warning and a count in the link's line.
#[test]
fn smb_like_share_keeps_the_data_and_warns_once_per_kind() {
    if !in_private_mount_ns!("smb_like_share_keeps_the_data_and_warns_once_per_kind") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (image, backing) = (root.path().join("image"), root.path().join("backing"));
    mount_tmpfs(&image, "256m");
    mount_tmpfs(&backing, "256m");
    rich_tree(&image.join("lower/data"));
    let merged = mount_overlay(&image.join("ovl"), &image.join("lower"));
    let before = describe(&merged.join("data"));
    let share = root.path().join("share");
    let _rig = LatencyFs::mount(
        &backing,
        &share,
        &["--deny", "link,xattr,mknod,chmod,chown"],
    );
    let cfg = root.path().join("sharelink.toml");
    fs::write(
        &cfg,
        config_text(&merged, &share, false, "", "\"data\" = \"data\""),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let o = sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    let err = stderr(&o);
    let mut kinds: Vec<String> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("the share refused"))
        .map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("kind="))
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "acls",
            "capabilities",
            "hard_links",
            "modes",
            "owners",
            "special_files",
            "xattrs"
        ],
        "{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
    // The link's line counts each loss.
    let line = err.lines().find(|l| l.contains("migrated")).unwrap();
    for k in ["hard_links", "xattrs", "special_files", "owners", "modes"] {
        assert!(line.contains(&format!("lost {k}")), "{k}: {line}");
    }
    // Every byte arrived; hard links became equal separate files.
    let got = describe(&share.join("data"));
    for (p, w) in before
        .0
        .iter()
        .filter(|(_, w)| w.kind == "file" || w.kind == "symlink")
    {
        let g = got
            .0
            .get(p)
            .unwrap_or_else(|| panic!("{} missing", p.display()));
        assert_eq!(
            (g.content, &g.target),
            (w.content, &w.target),
            "{}",
            p.display()
        );
    }
    let inos: BTreeSet<u64> = ["linked", "deep/linked-2", "deep/er/linked-3"]
        .iter()
        .map(|p| fs::metadata(share.join("data").join(p)).unwrap().ino())
        .collect();
    assert_eq!(
        inos.len(),
        3,
        "the share refuses hard links: separate copies"
    );
    assert_eq!(
        fs::read_link(merged.join("data")).unwrap(),
        share.join("data")
    );
    // Nothing left to warn about on the next run.
    let o = sharelink(&cfg).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
}

/// A file with many names on an app side that is not an image layer (a
/// volume, the writable layer): deleting one name changes the inode's
/// ctime, which must not make the other names look changed. Before, each
/// pass deleted about one name, and 30 names took six starts (exit 74 in
/// between, the command never started). Now one run moves them all, as
/// hard links.
#[test]
fn many_hard_links_on_a_plain_filesystem_move_in_one_run() {
    let sb = Sandbox::new("\"data\" = \"data\"");
    let app = sb.app.join("data");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("f"), "one inode, thirty-one names\n").unwrap();
    for i in 0..30 {
        fs::hard_link(app.join("f"), app.join(format!("h{i}"))).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    expect_code(&sb.run(["link"]), 0);
    let target = sb.share.join("data");
    let ino = fs::metadata(target.join("f")).unwrap().ino();
    for i in 0..30 {
        let m = fs::metadata(target.join(format!("h{i}"))).unwrap();
        assert_eq!(m.ino(), ino, "h{i} is not a hard link of f");
    }
    assert_eq!(fs::metadata(target.join("f")).unwrap().nlink(), 31);
}
