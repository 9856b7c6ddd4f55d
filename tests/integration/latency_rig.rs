//! The latency rig itself (tests/tools/latencyfs), so benchmarks and fault
//! tests built on it can trust it: it passes a `cp -a` tree through intact,
//! each `--deny` mode returns its documented errno, injected faults fire,
//! and requests from different threads are served concurrently (a rig that
//! serialised them would hide the very latency effect it exists to show).

use crate::support::latencyfs::LatencyFs;
use crate::support::*;

use std::ffi::CString;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of(r: libc::c_int) -> Option<i32> {
    (r != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) -> Option<i32> {
    let n = CString::new(name).unwrap();
    errno_of(unsafe {
        libc::lsetxattr(cpath(p).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0)
    })
}

fn get_xattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe {
        libc::lgetxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> Option<i32> {
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            cpath(a).as_ptr(),
            libc::AT_FDCWD,
            cpath(b).as_ptr(),
            flags,
        )
    };
    errno_of(r as libc::c_int)
}

/// Every entry's type, mode, owner, mtime (ns), size, content hash, link
/// target and `user.*` xattr, plus which entries share an inode.
fn fingerprint(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut inodes: Vec<(u64, String)> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                stack.push(p.clone());
                "dir".into()
            } else if ft.is_fifo() {
                "fifo".into()
            } else {
                let bytes = fs::read(&p).unwrap();
                let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
                    (h ^ *b as u64).wrapping_mul(0x100000001b3)
                });
                format!("file {} {h:x}", bytes.len())
            };
            let mtime = if ft.is_symlink() {
                0
            } else {
                m.mtime() * 1_000_000_000 + m.mtime_nsec()
            };
            let x = get_xattr(&p, "user.tag").map(|v| String::from_utf8_lossy(&v).into_owned());
            out.push(format!(
                "{rel} {what} {:o} {}:{} {mtime} xattr={:?}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                x.ok()
            ));
            if ft.is_file() && m.nlink() > 1 {
                inodes.push((m.ino(), rel));
            }
        }
    }
    inodes.sort();
    for w in inodes.windows(2) {
        if w[0].0 == w[1].0 {
            out.push(format!("hardlinked {} {}", w[0].1, w[1].1));
        }
    }
    out.sort();
    out
}

#[test]
fn latencyfs_passes_a_cp_a_tree_through() {
    if !in_private_mount_ns!("latencyfs_passes_a_cp_a_tree_through") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 60, 300_000, 7);
    fs::write(src.join("h1"), b"shared inode").unwrap();
    fs::hard_link(src.join("h1"), src.join("h2")).unwrap();
    fs::write(src.join("tagged"), b"x").unwrap();
    assert_eq!(set_xattr(&src.join("tagged"), "user.tag", b"blue"), None);
    sh(&format!("mkfifo '{}'", src.join("fifo").display()));
    fs::set_permissions(src.join("h1"), fs::Permissions::from_mode(0o4750)).unwrap();
    sh(&format!(
        "chown 1234:2345 '{}'",
        src.join("tagged").display()
    ));
    sh(&format!(
        "touch -h -d '2001-02-03 04:05:06.123456789' '{}'",
        src.join("fifo").display()
    ));
    // A sparse file: two 4 KiB extents in 8 MiB.
    let mut f = fs::File::create(src.join("sparse")).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&[1u8; 4096]).unwrap();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    f.write_all(&[2u8; 4096]).unwrap();
    drop(f);

    let rig = LatencyFs::mount(&tmp.path().join("backing"), &tmp.path().join("mnt"), &[]);
    sh(&format!(
        "cp -a '{}' '{}/copy' && sync",
        src.display(),
        rig.mnt.display()
    ));
    let want = fingerprint(&src);
    assert_eq!(
        fingerprint(&rig.mnt.join("copy")),
        want,
        "as seen through the mount"
    );
    assert_eq!(
        fingerprint(&rig.backing.join("copy")),
        want,
        "on the backing directory"
    );
    let sparse = fs::metadata(rig.backing.join("copy/sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "sparse file stayed sparse: {sparse:?}"
    );

    // SEEK_DATA passes through (FUSE_LSEEK).
    let fd = fs::File::open(rig.mnt.join("copy/sparse")).unwrap();
    let off = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&fd), 0, libc::SEEK_DATA) };
    assert_eq!(off, 1 << 20);
    // syncfs on the mount answers (the kernel does not ask the daemon).
    assert_eq!(
        errno_of(unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&fd)) }),
        None
    );
    // renameat2(RENAME_NOREPLACE) is honoured, both ways.
    let (a, b, c) = (rig.mnt.join("a"), rig.mnt.join("b"), rig.mnt.join("c"));
    fs::write(&a, b"a").unwrap();
    fs::write(&b, b"b").unwrap();
    assert_eq!(
        renameat2(&a, &b, libc::RENAME_NOREPLACE),
        Some(libc::EEXIST)
    );
    assert_eq!(renameat2(&a, &c, libc::RENAME_NOREPLACE), None);
    assert_eq!(fs::read(&c).unwrap(), b"a");
    // Renaming a directory keeps what is below it reachable.
    fs::rename(rig.mnt.join("copy"), rig.mnt.join("moved")).unwrap();
    assert_eq!(fingerprint(&rig.mnt.join("moved")), want);

    let s = rig.stats(false);
    assert!(
        s["create"] > 60 && s["setattr"] > 60 && s["link"] >= 1,
        "{s:?}"
    );
}

#[test]
fn latencyfs_deny_modes_return_smb_errnos() {
    if !in_private_mount_ns!("latencyfs_deny_modes_return_smb_errnos") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = LatencyFs::mount(
        &tmp.path().join("backing"),
        &tmp.path().join("mnt"),
        &[
            "--deny",
            "link,xattr,mknod,chmod,chown,utimes,symlink,rename2",
            "--fail-op",
            "mkdir:2:EIO",
            "--enospc-after",
            "100000",
        ],
    );
    let m = &rig.mnt;
    let f = m.join("f");
    fs::write(&f, b"data").unwrap();
    let code = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    let c = |p: &Path| cpath(p);
    assert_eq!(
        code(fs::hard_link(&f, m.join("hl"))),
        Some(libc::EOPNOTSUPP),
        "link"
    );
    assert_eq!(
        set_xattr(&f, "user.a", b"1"),
        Some(libc::EOPNOTSUPP),
        "setxattr"
    );
    assert_eq!(get_xattr(&f, "user.a"), Err(libc::EOPNOTSUPP), "getxattr");
    assert_eq!(
        errno_of(unsafe { libc::mkfifo(c(&m.join("p")).as_ptr(), 0o644) }),
        Some(libc::EPERM),
        "mkfifo"
    );
    assert_eq!(
        code(fs::set_permissions(&f, fs::Permissions::from_mode(0o600))),
        Some(libc::EPERM),
        "chmod"
    );
    assert_eq!(
        errno_of(unsafe { libc::chown(c(&f).as_ptr(), 1, 1) }),
        Some(libc::EPERM),
        "chown"
    );
    assert_eq!(
        errno_of(unsafe { libc::utimensat(libc::AT_FDCWD, c(&f).as_ptr(), std::ptr::null(), 0) }),
        Some(libc::EPERM),
        "utimes"
    );
    assert_eq!(
        code(std::os::unix::fs::symlink("f", m.join("s"))),
        Some(libc::EOPNOTSUPP),
        "symlink"
    );
    assert_eq!(
        renameat2(&f, &m.join("g"), libc::RENAME_NOREPLACE),
        Some(libc::EINVAL),
        "rename2"
    );
    fs::rename(&f, m.join("g")).expect("plain rename still works");
    // Injected faults: the 2nd mkdir fails once; writes stop at 100,000 bytes.
    fs::create_dir(m.join("d1")).unwrap();
    assert_eq!(code(fs::create_dir(m.join("d2"))), Some(libc::EIO));
    fs::create_dir(m.join("d3")).unwrap();
    let e = fs::write(m.join("big"), vec![0u8; 200_000]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
}

#[test]
fn latencyfs_serves_requests_concurrently() {
    if !in_private_mount_ns!("latencyfs_serves_requests_concurrently") {
        return;
    }
    const N: usize = 16;
    const DELAY_MS: u64 = 100;
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    fs::create_dir_all(backing.join("d")).unwrap();
    for i in 0..2 * N {
        fs::write(backing.join(format!("d/f{i}")), b"").unwrap();
    }
    let rig = LatencyFs::mount(&backing, &tmp.path().join("mnt"), &["--delay-ms", "100"]);
    let dir = rig.mnt.join("d");
    fs::metadata(&dir).unwrap();

    // One stat of a new name: one LOOKUP (the directory's entry and
    // attributes are cached for the default 1 s), so one delay.
    let t = Instant::now();
    fs::metadata(dir.join("f0")).unwrap();
    let one = t.elapsed();
    assert!(
        one >= Duration::from_millis(DELAY_MS),
        "one stat took {one:?}"
    );

    // N stats of N other names in the same directory from N threads.
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 1..=N {
            let p = dir.join(format!("f{i}"));
            s.spawn(move || fs::metadata(p).unwrap());
        }
    });
    let par = t.elapsed();
    let serial = Duration::from_millis(DELAY_MS * N as u64);
    eprintln!("{N} parallel stats at {DELAY_MS} ms: {par:?} (serial would be >= {serial:?})");
    assert!(
        par < serial / 4,
        "parallel stats took {par:?}: requests were serialised"
    );
    let s = rig.stats(false);
    assert!(s["peak_in_flight"] >= (N / 2) as u64, "{s:?}");
}

/// `--case-insensitive`: names match in any case and keep the case they
/// were first written in, as on an SMB share; a name that exists in
/// another case cannot be created again.
#[test]
fn latencyfs_case_insensitive_mode_matches_names_in_any_case() {
    if !in_private_mount_ns!("latencyfs_case_insensitive_mode_matches_names_in_any_case") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = LatencyFs::mount(
        &tmp.path().join("backing"),
        &tmp.path().join("mnt"),
        &["--case-insensitive"],
    );
    let m = &rig.mnt;
    fs::write(m.join("Report.csv"), b"v1").unwrap();
    assert_eq!(fs::read(m.join("report.CSV")).unwrap(), b"v1");
    let excl = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("REPORT.csv"));
    assert_eq!(
        excl.err().and_then(|e| e.raw_os_error()),
        Some(libc::EEXIST)
    );
    fs::create_dir(m.join("Out")).unwrap();
    assert_eq!(
        fs::create_dir(m.join("out"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::EEXIST)
    );
    fs::write(m.join("OUT/a.txt"), b"in Out").unwrap();
    let names: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(&rig.backing)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names, ["Out", "Report.csv"]);
    assert_eq!(fs::read(rig.backing.join("Out/a.txt")).unwrap(), b"in Out");
    fs::remove_file(m.join("REPORT.CSV")).unwrap();
    assert!(!rig.backing.join("Report.csv").exists());
}
