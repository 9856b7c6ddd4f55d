//! The staging journal: which files of a staging tree are complete.
//!
//! A line is appended for a batch of files only after a `syncfs` made
//! their bytes durable. It names the app file's identity when it was copied
//! and the copy's, so a later run (after a crash, or on another replica)
//! reuses a staged file only if the app file is still that version and the
//! staged name still holds the copy that was completed. The journal
//! outlives the commit: until the app directory is empty, it tells a run
//! that an app file and the share file at its path are that same copy
//! without reading both. A torn last line (a crash while appending) is
//! ignored.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind, Meta, Time};
use crate::fs::names::fnv1a;

pub(crate) use super::layout::JOURNAL as NAME;
const HEADER: &[u8] = b"sharelink staging journal v2\n";

/// One completed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// The app file as it was when copied.
    pub(crate) app: Identity,
    /// The copy when it was complete.
    pub(crate) copy: Identity,
}

impl Record {
    /// Whether `m` is still that copy: the same inode, with the size and
    /// modification time it was given (renames move its ctime, writes its
    /// mtime). Records are dropped before the copies they name, so the
    /// inode cannot have been reused.
    pub(crate) fn is_copy(&self, m: &Meta) -> bool {
        m.kind == Kind::File
            && m.id.ino == self.copy.ino
            && m.id.size == self.copy.size
            && m.id.mtime == self.copy.mtime
    }
}

pub(crate) struct Journal {
    file: Option<std::fs::File>,
    /// The file being created on a thread of its own ([`Journal::create_aside`]).
    opening: Option<std::thread::JoinHandle<io::Result<std::fs::File>>>,
    /// The file is empty: the header goes out with the first records (one
    /// write fewer; an empty journal reads as one without records).
    header_due: bool,
}

impl Journal {
    /// Open (creating) the journal in the staging directory.
    pub(crate) fn open(staging: &Dir) -> io::Result<Journal> {
        let mut file = staging.open_append(OsStr::new(NAME))?;
        let len = file.metadata()?.len();
        if len > 0 {
            // After a torn last line, start a fresh one.
            let mut last = [0u8; 1];
            let r = staging.open_read(OsStr::new(NAME))?;
            if std::os::unix::fs::FileExt::read_at(&r, &mut last, len - 1)? == 1 && last[0] != b'\n'
            {
                file.write_all(b"\n")?;
            }
        }
        Ok(Journal {
            file: Some(file),
            opening: None,
            header_due: len == 0,
        })
    }

    /// Create the journal in a staging directory just made (so none is
    /// there), on a thread of its own: on a network share the create is
    /// round trips the copy need not wait for. The first [`Journal::append`]
    /// waits for it, and so does dropping the journal (nothing is created
    /// in a staging directory after it is let go).
    pub(crate) fn create_aside(staging: &Dir) -> io::Result<Journal> {
        let dir = staging.try_clone()?;
        let opening = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || dir.open_append(OsStr::new(NAME)))?;
        Ok(Journal {
            file: None,
            opening: Some(opening),
            header_due: true,
        })
    }

    /// Close the journal now, after the one being created
    /// ([`Journal::create_aside`]) is there: its staging directory is
    /// removed next, and a name unlinked while its file is open stays in
    /// the directory on SMB (delete pending).
    pub(crate) fn close(&mut self) {
        let _ = self.file();
        if let Some(f) = self.file.take() {
            if let Err(e) = crate::fs::closer::close(f) {
                crate::debug!("closing the journal: {e}");
            }
        }
    }

    fn file(&mut self) -> io::Result<&mut std::fs::File> {
        if let Some(h) = self.opening.take() {
            let f = h
                .join()
                .map_err(|_| io::Error::other("creating the journal failed"))??;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the journal could not be created"))
    }

    /// Append records for a batch of files whose bytes are durable.
    pub(crate) fn append(&mut self, recs: &[(PathBuf, Record)]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(recs.len() * 96 + HEADER.len());
        if self.header_due {
            buf.extend_from_slice(HEADER);
        }
        for (rel, r) in recs {
            encode(&mut buf, rel, r);
        }
        self.file()?.write_all(&buf)?;
        self.header_due = false;
        Ok(())
    }

    /// What a journal says was completed (nothing when there is none).
    pub(crate) fn load(staging: &Dir) -> io::Result<HashMap<PathBuf, Record>> {
        let mut text = Vec::new();
        match staging.open_read(OsStr::new(NAME)) {
            Ok(mut f) => {
                f.read_to_end(&mut text)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(HashMap::new()),
            Err(e) => return Err(e),
        }
        Ok(parse(&text))
    }
}

/// `F <checksum> <fields…> <escaped path>\n`: the checksum covers the rest
/// of the line, so a line cut short by a crash is never taken for a
/// shorter path.
pub(crate) fn encode(buf: &mut Vec<u8>, rel: &Path, r: &Record) {
    let mut body = Vec::with_capacity(160);
    for id in [&r.app, &r.copy] {
        body.extend_from_slice(
            format!(
                "{} {} {}.{} {}.{} ",
                id.ino, id.size, id.mtime.sec, id.mtime.nsec, id.ctime.sec, id.ctime.nsec
            )
            .as_bytes(),
        );
    }
    for &b in rel.as_os_str().as_bytes() {
        match b {
            b'\\' => body.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => body.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => body.push(b),
        }
    }
    buf.extend_from_slice(format!("F {:016x} ", fnv1a(&body)).as_bytes());
    buf.extend_from_slice(&body);
    buf.push(b'\n');
}

fn parse(text: &[u8]) -> HashMap<PathBuf, Record> {
    parse_lines(text.strip_prefix(HEADER).unwrap_or(&[]))
}

/// Records in `body` (lines as [`encode`] writes them), ignoring any that
/// are torn or garbled.
pub(crate) fn parse_lines(body: &[u8]) -> HashMap<PathBuf, Record> {
    let mut out = HashMap::new();
    // Only complete lines: the last one may be torn.
    let complete = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[..i],
        None => return out,
    };
    for line in complete.split(|&b| b == b'\n') {
        if let Some((rel, rec)) = parse_line(line) {
            out.insert(rel, rec);
        }
    }
    out
}

fn parse_line(line: &[u8]) -> Option<(PathBuf, Record)> {
    let rest = line.strip_prefix(b"F ")?;
    let (sum, body) = (rest.get(..16)?, rest.get(17..)?);
    if std::str::from_utf8(sum).ok()? != format!("{:016x}", fnv1a(body)) {
        return None;
    }
    let mut parts = body.splitn(9, |&b| b == b' ');
    let num = |p: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(p?).ok()?.parse().ok() };
    let time = |p: Option<&[u8]>| -> Option<Time> {
        let s = std::str::from_utf8(p?).ok()?;
        let (a, b) = s.split_once('.')?;
        Some(Time {
            sec: a.parse().ok()?,
            nsec: b.parse().ok()?,
        })
    };
    let mut id = || -> Option<Identity> {
        Some(Identity {
            ino: num(parts.next())?,
            size: num(parts.next())?,
            mtime: time(parts.next())?,
            ctime: time(parts.next())?,
        })
    };
    let app = id()?;
    let copy = id()?;
    let rel = unescape(parts.next()?)?;
    if rel.is_empty() {
        return None;
    }
    Some((PathBuf::from(OsStr::from_bytes(&rel)), Record { app, copy }))
}

fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            match s.get(i + 1)? {
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                }
                b'x' => {
                    let hex = std::str::from_utf8(s.get(i + 2..i + 4)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 4;
                }
                _ => return None,
            }
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u64) -> Record {
        Record {
            app: Identity {
                ino: n,
                size: n * 10,
                mtime: Time { sec: 5, nsec: 6 },
                ctime: Time { sec: -1, nsec: 999 },
            },
            copy: Identity {
                ino: n + 1,
                size: n * 10,
                mtime: Time { sec: 5, nsec: 6 },
                ctime: Time { sec: 7, nsec: 8 },
            },
        }
    }

    #[test]
    fn round_trips_odd_names_and_ignores_torn_lines() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        let odd = PathBuf::from(OsStr::from_bytes(b"a b/new\nline\\x\xff\x7f end"));
        let mut j = Journal::open(&d).unwrap();
        j.append(&[(odd.clone(), rec(1)), ("plain/file".into(), rec(2))])
            .unwrap();
        drop(j);
        // A crash mid-append leaves a torn line behind, which may look
        // like a line for a shorter path.
        let mut whole = Vec::new();
        encode(&mut whole, Path::new("dir/file123"), &rec(9));
        let mut f = d.open_append(OsStr::new(NAME)).unwrap();
        f.write_all(&whole[..whole.len() - 3]).unwrap();
        let m = Journal::load(&d).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&odd], rec(1));
        assert_eq!(m[Path::new("plain/file")], rec(2));
        // Reopening appends after what is there.
        Journal::open(&d)
            .unwrap()
            .append(&[("x".into(), rec(3))])
            .unwrap();
        let m = Journal::load(&d).unwrap();
        assert_eq!((m.len(), m[Path::new("x")]), (3, rec(3)));
    }

    #[test]
    fn a_journal_made_aside_takes_the_first_records_and_is_there_once_dropped() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        let mut j = Journal::create_aside(&d).unwrap();
        j.append(&[("a".into(), rec(1))]).unwrap();
        drop(j);
        let m = Journal::load(&d).unwrap();
        assert_eq!((m.len(), m[Path::new("a")]), (1, rec(1)));
        // Dropped before any record: the file is there (empty) once the
        // journal is let go, nothing is made in the directory after.
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        drop(Journal::create_aside(&d).unwrap());
        assert!(t.path().join(NAME).exists());
        assert!(Journal::load(&d).unwrap().is_empty());
    }

    #[test]
    fn missing_journal_is_empty() {
        let t = tempfile::tempdir().unwrap();
        assert!(Journal::load(&Dir::open(t.path()).unwrap())
            .unwrap()
            .is_empty());
        assert!(parse(b"garbage").is_empty());
    }
}
