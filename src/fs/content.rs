//! The bytes of regular files: copy them (holes stay holes) and compare
//! them. Equality of content is only ever decided here, by bytes.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Between chunks a long copy checks whether it should stop.
const CHUNK: usize = 8 << 20;
const BUF: usize = 256 << 10;

fn stopped(stop: &AtomicBool) -> io::Result<()> {
    if stop.load(Ordering::Relaxed) {
        Err(io::Error::from_raw_os_error(libc::ECANCELED))
    } else {
        Ok(())
    }
}

fn lseek(f: &File, off: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Where a copy goes from and to: the source's and the target's device
/// numbers (the kernel copies within a filesystem, not across).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Devices {
    pub(crate) src: u64,
    pub(crate) dst: u64,
}

impl Devices {
    fn key(self) -> u64 {
        self.src.rotate_left(32) ^ self.dst
    }
}

/// What a long copy obeys and reports: a flag that stops it between
/// chunks, and a counter of the bytes copied so far (for progress lines
/// that move during a big file, not only after it).
#[derive(Clone, Copy)]
pub(crate) struct Watch<'a> {
    pub(crate) stop: &'a AtomicBool,
    pub(crate) copied: &'a AtomicU64,
}

/// Copy `len` bytes of `src` into a new, empty `dst`, keeping holes when
/// `sparse` (the source has fewer blocks than bytes): data ranges are found
/// with `SEEK_DATA`/`SEEK_HOLE` and the size is set at the end, as
/// `cp --sparse=auto` does. Returns the bytes written.
pub(crate) fn copy(
    src: &File,
    dst: &File,
    len: u64,
    sparse: bool,
    devs: Devices,
    watch: Watch<'_>,
) -> io::Result<u64> {
    let mut written = 0;
    if sparse {
        let mut pos: i64 = 0;
        let end = len as i64;
        loop {
            if pos >= end {
                break;
            }
            let data = match lseek(src, pos, libc::SEEK_DATA) {
                Ok(d) => d,
                // No data after `pos`: the rest is a hole.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                // No SEEK_DATA here: copy densely from `pos`.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    written += copy_range(src, dst, pos, end, devs, watch)?;
                    break;
                }
                Err(e) => return Err(e),
            };
            if data >= end {
                break;
            }
            let hole = lseek(src, data, libc::SEEK_HOLE)?.min(end);
            written += copy_range(src, dst, data, hole, devs, watch)?;
            pos = hole;
        }
        dst.set_len(len)?;
    } else {
        written = copy_range(src, dst, 0, len as i64, devs, watch)?;
    }
    Ok(written)
}

thread_local! {
    /// Each worker's copy buffer, kept between files.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The pair of devices (source, target) last found to refuse
/// `copy_file_range` (across filesystems it is EXDEV for every file): not
/// asked again for each of thousands of files.
static NO_KERNEL_COPY: AtomicU64 = AtomicU64::new(u64::MAX);

/// Copy `[from, to)` of `src` to the same offsets of `dst`: in the kernel
/// (`copy_file_range`) where it can, else by reads and writes. Stops early
/// at end of file (the caller's identity check then notices the file
/// changed).
fn copy_range(
    src: &File,
    dst: &File,
    from: i64,
    to: i64,
    devs: Devices,
    watch: Watch<'_>,
) -> io::Result<u64> {
    let pair = devs.key();
    if NO_KERNEL_COPY.load(Ordering::Relaxed) == pair {
        return BUFFER.with(|b| user_copy(src, dst, from, to, watch, &mut b.borrow_mut()));
    }
    let mut off_in = from;
    let mut off_out = from;
    while off_in < to {
        stopped(watch.stop)?;
        let want = ((to - off_in) as usize).min(CHUNK);
        // SAFETY: valid fds and offset pointers.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Across filesystems, or not supported here.
                Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                    if off_in == from =>
                {
                    NO_KERNEL_COPY.store(pair, Ordering::Relaxed);
                    return BUFFER
                        .with(|b| user_copy(src, dst, from, to, watch, &mut b.borrow_mut()));
                }
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if r == 0 {
            break;
        }
        watch.copied.fetch_add(r as u64, Ordering::Relaxed);
    }
    Ok((off_in - from) as u64)
}

/// [`copy_range`] through a user-space buffer.
fn user_copy(
    src: &File,
    dst: &File,
    from: i64,
    to: i64,
    watch: Watch<'_>,
    buf: &mut Vec<u8>,
) -> io::Result<u64> {
    // Grown to what a range needs, up to BUF: a pool of workers copying
    // small files keeps small buffers.
    let need = usize::try_from(to - from).unwrap_or(0).min(BUF);
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let mut off = from;
    while off < to {
        stopped(watch.stop)?;
        let want = ((to - off) as usize).min(BUF);
        let n = pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        pwrite_all(dst, &buf[..n], off)?;
        off += n as i64;
        watch.copied.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok((off - from) as u64)
}

fn pread(f: &File, buf: &mut [u8], off: i64) -> io::Result<usize> {
    loop {
        // SAFETY: reading into our own buffer.
        let r = unsafe { libc::pread(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn pwrite_all(f: &File, mut buf: &[u8], mut off: i64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writing from our own buffer.
        let r = unsafe { libc::pwrite(f.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = &buf[r as usize..];
        off += r as i64;
    }
    Ok(())
}

/// Whether `a` and `b` hold the same `len` bytes (both are read to the end
/// of `len`; a file shorter than `len` is different).
pub(crate) fn equal(a: &File, b: &File, len: u64, stop: &AtomicBool) -> io::Result<bool> {
    let mut x = vec![0u8; BUF];
    let mut y = vec![0u8; BUF];
    let mut off: i64 = 0;
    while (off as u64) < len {
        stopped(stop)?;
        let want = ((len - off as u64) as usize).min(BUF);
        let n = read_full(a, &mut x[..want], off)?;
        let m = read_full(b, &mut y[..want], off)?;
        if n != want || m != want || x[..n] != y[..m] {
            return Ok(false);
        }
        off += n as i64;
    }
    // Neither may hold more than `len` bytes.
    let mut one = [0u8; 1];
    Ok(pread(a, &mut one, off)? == 0 && pread(b, &mut one, off)? == 0)
}

fn read_full(f: &File, buf: &mut [u8], off: i64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = pread(f, &mut buf[got..], off + got as i64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVS: Devices = Devices { src: 1, dst: 1 };
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_file_stays_sparse_and_equal() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let mut f = File::create(&a).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let src = File::open(&a).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&b)
            .unwrap();
        let len = src.metadata().unwrap().len();
        let stop = AtomicBool::new(false);
        let copied = AtomicU64::new(0);
        let watch = Watch {
            stop: &stop,
            copied: &copied,
        };
        let n = copy(&src, &dst, len, true, DEVS, watch).unwrap();
        assert_eq!(copied.load(Ordering::Relaxed), n);
        assert!(n < 1 << 20, "copied {n} bytes of data");
        let m = std::fs::metadata(&b).unwrap();
        assert_eq!(m.len(), len);
        assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
        assert!(equal(&src, &dst, len, &stop).unwrap());
    }

    #[test]
    fn equal_is_by_bytes() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::write(&a, b"same size").unwrap();
        std::fs::write(&b, b"same SIZE").unwrap();
        let stop = AtomicBool::new(false);
        let (fa, fb) = (File::open(&a).unwrap(), File::open(&b).unwrap());
        assert!(!equal(&fa, &fb, 9, &stop).unwrap());
        std::fs::write(&b, b"same size").unwrap();
        let fb = File::open(&b).unwrap();
        assert!(equal(&fa, &fb, 9, &stop).unwrap());
        std::fs::write(&b, b"same size+").unwrap();
        let fb = File::open(&b).unwrap();
        assert!(!equal(&fa, &fb, 9, &stop).unwrap());
    }

    #[test]
    fn user_copy_grows_its_buffer_to_the_range() {
        let t = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let copied = AtomicU64::new(0);
        let watch = Watch {
            stop: &stop,
            copied: &copied,
        };
        let mut buf = Vec::new();
        for (i, len) in [5_000usize, 700_000, 5_000].into_iter().enumerate() {
            let (a, b) = (
                t.path().join(format!("a{i}")),
                t.path().join(format!("b{i}")),
            );
            let data: Vec<u8> = (0..len).map(|j| (j % 253) as u8 ^ i as u8).collect();
            std::fs::write(&a, &data).unwrap();
            let (src, dst) = (File::open(&a).unwrap(), File::create(&b).unwrap());
            let n = user_copy(&src, &dst, 0, len as i64, watch, &mut buf).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(std::fs::read(&b).unwrap(), data);
            // Small ranges keep the buffer small; a big one grows it to BUF.
            assert_eq!(buf.len(), if i == 0 { len } else { BUF });
        }
    }

    #[test]
    fn dense_copy_across_files() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &data).unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::create(&b).unwrap();
        let stop = AtomicBool::new(false);
        let copied = AtomicU64::new(0);
        let watch = Watch {
            stop: &stop,
            copied: &copied,
        };
        assert_eq!(
            copy(&src, &dst, data.len() as u64, false, DEVS, watch).unwrap(),
            data.len() as u64
        );
        // Counted as it goes, for progress lines during a big file.
        assert_eq!(copied.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(std::fs::read(&b).unwrap(), data);
    }
}
