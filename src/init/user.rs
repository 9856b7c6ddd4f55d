//! `--user` / `run.user`: who the command runs as.
//!
//! The binary is static musl, so there is no NSS and no `getpwnam`: the
//! container's `/etc/passwd` and `/etc/group` are parsed here. The parsing is
//! pure ([`lookup`] works on the files' text) and unit-tested; [`resolve_in`]
//! is the thin reader, with a root directory so tests need no real `/etc`.
//!
//! Accepted forms: `NAME`, `UID`, `NAME:GROUP`, `UID:GID`, `UID:GROUP`,
//! `NAME:GID`. The rules follow Docker's `--user` where Docker has one:
//!
//! - A numeric UID need not exist in `/etc/passwd` (images often run as an
//!   arbitrary uid). Without an entry its group is gid 0, as in Docker, and
//!   its home is `/`.
//! - A numeric GID need not exist in `/etc/group`; a group *name* must.
//! - An unknown user or group name is a config error (78) naming the file.
//! - Supplementary groups: the primary gid, then every group in `/etc/group`
//!   whose member list names the user. Unlike Docker, an explicit `:GROUP`
//!   only chooses the primary group and keeps the user's memberships
//!   (including its passwd group): on a file share the primary group
//!   decides who owns new files, while the memberships decide what the user
//!   may read, and choosing the former should not silently take away the
//!   latter.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The identity the command gets, fully resolved before anything is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) uid: u32,
    /// Primary group.
    pub(crate) gid: u32,
    /// What `setgroups` gets: the primary gid first, then the user's
    /// memberships, without duplicates.
    pub(crate) groups: Vec<u32>,
    /// The passwd name, when the user has an entry.
    pub(crate) name: Option<String>,
    /// `HOME` for the command: the passwd home directory, `/` without one
    /// (the image's `HOME=/root` would be unusable after dropping root).
    pub(crate) home: PathBuf,
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name} ")?;
        }
        write!(f, "(uid {}, gid {}, groups ", self.uid, self.gid)?;
        for (i, g) in self.groups.iter().enumerate() {
            write!(f, "{}{g}", if i == 0 { "" } else { "," })?;
        }
        f.write_str(")")
    }
}

/// Resolve a user spec against the container's `/etc/passwd` and `/etc/group`.
pub(crate) fn resolve(spec: &str) -> Result<Credentials> {
    resolve_in(Path::new("/"), spec)
}

/// [`resolve`] against `<root>/etc/passwd` and `<root>/etc/group`.
fn resolve_in(root: &Path, spec: &str) -> Result<Credentials> {
    let passwd = Database::read(root.join("etc/passwd"))?;
    let group = Database::read(root.join("etc/group"))?;
    lookup(spec, &passwd, &group)
}

/// One of the two files: its path (for messages) and its text, or `None`
/// when it does not exist (a minimal image may have neither; numeric ids
/// still work then).
#[derive(Debug, Clone)]
pub(crate) struct Database {
    pub(crate) path: PathBuf,
    pub(crate) text: Option<String>,
}

impl Database {
    pub(crate) fn read(path: PathBuf) -> Result<Database> {
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Database {
                path,
                text: Some(text),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Database { path, text: None }),
            Err(e) => Err(Error::Config(format!(
                "cannot read {} to resolve the user: {e}",
                path.display()
            ))),
        }
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        self.text
            .as_deref()
            .unwrap_or("")
            .lines()
            // Comments, blank lines and NIS compat entries (`+`, `-`) are
            // not users.
            .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
    }
}

/// A parsed `/etc/passwd` line (only the fields sharelink uses).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// `name:password:uid:gid:gecos:home:shell`. Lines that do not parse are
/// skipped rather than failing the lookup: one bad line elsewhere in the
/// file must not stop the container.
fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    let mut f = line.split(':');
    let name = f.next().filter(|n| !n.is_empty())?;
    let _password = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    let _gecos = f.next();
    let home = f.next().unwrap_or("");
    Some(PasswdEntry {
        name,
        uid,
        gid,
        home,
    })
}

/// A parsed `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

impl GroupEntry<'_> {
    fn has_member(&self, user: &str) -> bool {
        !user.is_empty() && self.members.split(',').any(|m| m.trim() == user)
    }
}

/// `name:password:gid:member,member`.
fn parse_group_line(line: &str) -> Option<GroupEntry<'_>> {
    let mut f = line.split(':');
    let name = f.next().filter(|n| !n.is_empty())?;
    let _password = f.next()?;
    let gid = f.next()?.parse().ok()?;
    let members = f.next().unwrap_or("");
    Some(GroupEntry { name, gid, members })
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The passwd entry of `user` (a name or a uid); a uid without an entry
/// is `Err(uid)` in the `Ok`, since that is allowed (Docker's `--user`).
fn passwd_entry<'a>(
    spec: &str,
    user: &str,
    passwd: &'a Database,
) -> Result<Result<PasswdEntry<'a>, u32>> {
    if is_numeric(user) {
        // u32::MAX is (uid_t)-1, "leave unchanged" to setresuid.
        let uid: u32 = user
            .parse()
            .ok()
            .filter(|&u| u != u32::MAX)
            .ok_or_else(|| Error::Config(format!("user {spec:?}: the uid is out of range")))?;
        return Ok(passwd
            .lines()
            .filter_map(parse_passwd_line)
            .find(|e| e.uid == uid)
            .ok_or(uid));
    }
    match passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|e| e.name == user)
    {
        Some(e) => Ok(Ok(e)),
        None => {
            let why = if passwd.text.is_some() {
                "no such user in"
            } else {
                "cannot look up a user name without"
            };
            Err(Error::Config(format!(
                "user {user:?} (from {spec:?}): {why} {}",
                passwd.path.display()
            )))
        }
    }
}

/// The gid of `g` (a name or a gid).
fn group_id(spec: &str, g: &str, group: &Database) -> Result<u32> {
    if is_numeric(g) {
        return g
            .parse()
            .ok()
            .filter(|&g| g != u32::MAX)
            .ok_or_else(|| Error::Config(format!("user {spec:?}: the gid is out of range")));
    }
    group
        .lines()
        .filter_map(parse_group_line)
        .find(|e| e.name == g)
        .map(|e| e.gid)
        .ok_or_else(|| {
            Error::Config(format!(
                "group {g:?} (from {spec:?}): no such group in {}",
                group.path.display()
            ))
        })
}

/// Resolve `spec` against the two databases. Pure: no I/O.
pub(crate) fn lookup(spec: &str, passwd: &Database, group: &Database) -> Result<Credentials> {
    let bad = |why: &str| Error::Config(format!("user {spec:?}: {why}"));
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(bad(
            "the user part is empty (expected NAME, UID, NAME:GROUP or UID:GID)",
        ));
    }
    if let Some(g) = group_part {
        if g.is_empty() || g.contains(':') {
            return Err(bad("expected NAME, UID, NAME:GROUP or UID:GID"));
        }
    }

    let entry = passwd_entry(spec, user_part, passwd)?;
    // Without a passwd entry: Docker's defaults, gid 0 and home `/`.
    let (uid, default_gid, name, home) = match &entry {
        Ok(e) => (
            e.uid,
            e.gid,
            Some(e.name),
            if e.home.is_empty() { "/" } else { e.home },
        ),
        Err(uid) => (*uid, 0, None, "/"),
    };

    let gid = match group_part {
        None => default_gid,
        Some(g) => group_id(spec, g, group)?,
    };

    let mut groups = vec![gid];
    if let Some(name) = name {
        // The passwd group is a membership too when `:GROUP` chose another.
        if default_gid != gid {
            groups.push(default_gid);
        }
        for e in group.lines().filter_map(parse_group_line) {
            if e.has_member(name) && !groups.contains(&e.gid) {
                groups.push(e.gid);
            }
        }
    }

    Ok(Credentials {
        uid,
        gid,
        groups,
        name: name.map(str::to_owned),
        home: PathBuf::from(home),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
+nis-compat
bad line without fields
broken:x:notanumber:1:::
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:1000:1001:App user,,,:/home/app:/bin/sh
short:x:1500:1500
1234:x:2000:2000::/home/digits:/bin/sh
";

    const GROUP: &str = "\
root:x:0:
nogroup:x:65534:
app:x:1001:
data:x:2001:app,other
video:x:44: other , app
audio:x:29:appx
dup:x:1001:app
";

    fn db(path: &str, text: Option<&str>) -> Database {
        Database {
            path: PathBuf::from(path),
            text: text.map(str::to_owned),
        }
    }

    fn look(spec: &str) -> Result<Credentials> {
        lookup(
            spec,
            &db("/etc/passwd", Some(PASSWD)),
            &db("/etc/group", Some(GROUP)),
        )
    }

    fn ids(spec: &str) -> (u32, u32, Vec<u32>) {
        let c = look(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        (c.uid, c.gid, c.groups)
    }

    fn err(spec: &str) -> String {
        let e = look(spec).expect_err(spec);
        assert!(matches!(e, Error::Config(_)), "{spec}: {e:?}");
        assert_eq!(e.exit_code(), crate::exit_code::ExitCode::Config);
        e.to_string()
    }

    #[test]
    fn name() {
        let c = look("app").unwrap();
        assert_eq!(c.uid, 1000);
        assert_eq!(c.gid, 1001);
        // Primary first, then memberships in file order; `dup` has the
        // primary gid again and is not repeated; `appx` is not `app`.
        assert_eq!(c.groups, [1001, 2001, 44]);
        assert_eq!(c.name.as_deref(), Some("app"));
        assert_eq!(c.home, PathBuf::from("/home/app"));
        assert_eq!(
            c.to_string(),
            "app (uid 1000, gid 1001, groups 1001,2001,44)"
        );
    }

    #[test]
    fn numeric_uid_with_entry_is_that_user() {
        let c = look("1000").unwrap();
        assert_eq!(
            (c.uid, c.gid, c.groups.clone()),
            (1000, 1001, vec![1001, 2001, 44])
        );
        assert_eq!(c.name.as_deref(), Some("app"));
    }

    #[test]
    fn ids_that_mean_leave_unchanged_are_out_of_range() {
        for spec in [
            "4294967295",
            "app:4294967295",
            "4294967296",
            "0:99999999999",
        ] {
            let e = look(spec).unwrap_err().to_string();
            assert!(e.contains("out of range"), "{spec}: {e}");
        }
    }

    #[test]
    fn numeric_uid_without_entry_gets_gid_0_like_docker() {
        let c = look("4242").unwrap();
        assert_eq!((c.uid, c.gid, c.groups.clone()), (4242, 0, vec![0]));
        assert_eq!(c.name, None);
        assert_eq!(c.home, PathBuf::from("/"));
        assert_eq!(c.to_string(), "(uid 4242, gid 0, groups 0)");
    }

    #[test]
    fn explicit_group_is_primary_and_memberships_stay() {
        assert_eq!(ids("app:data"), (1000, 2001, vec![2001, 1001, 44]));
        assert_eq!(ids("app:65534"), (1000, 65534, vec![65534, 1001, 2001, 44]));
        assert_eq!(
            ids("1000:nogroup"),
            (1000, 65534, vec![65534, 1001, 2001, 44])
        );
        assert_eq!(ids("nobody:nogroup"), (65534, 65534, vec![65534]));
    }

    #[test]
    fn numeric_pairs_need_no_entries() {
        assert_eq!(ids("4242:4343"), (4242, 4343, vec![4343]));
        assert_eq!(ids("4242:data"), (4242, 2001, vec![2001]));
        assert_eq!(ids("0:0"), (0, 0, vec![0]));
    }

    #[test]
    fn short_lines_and_missing_home() {
        let c = look("short").unwrap();
        assert_eq!((c.uid, c.gid), (1500, 1500));
        assert_eq!(c.home, PathBuf::from("/"));
    }

    #[test]
    fn numeric_spec_is_a_uid_not_a_name() {
        // A user literally named "1234" is not what "1234" means (Docker
        // reads digits as a uid too).
        let c = look("1234").unwrap();
        assert_eq!((c.uid, c.gid, c.name), (1234, 0, None));
    }

    #[test]
    fn unknown_names_name_the_file() {
        let e = err("ghost");
        assert!(e.contains("\"ghost\"") && e.contains("/etc/passwd"), "{e}");
        let e = err("app:ghosts");
        assert!(e.contains("\"ghosts\"") && e.contains("/etc/group"), "{e}");
        // Comment and broken lines are never users.
        err("broken");
        err("# a comment");
    }

    #[test]
    fn malformed_specs() {
        for spec in [
            "",
            ":",
            ":0",
            "app:",
            "a:b:c",
            "99999999999",
            "0:99999999999",
        ] {
            let e = err(spec);
            assert!(e.contains(&format!("{spec:?}")), "{spec}: {e}");
        }
    }

    #[test]
    fn missing_files() {
        let none_p = db("/r/etc/passwd", None);
        let none_g = db("/r/etc/group", None);
        let c = lookup("7:8", &none_p, &none_g).unwrap();
        assert_eq!((c.uid, c.gid, c.groups), (7, 8, vec![8]));
        let e = lookup("app", &none_p, &none_g).unwrap_err().to_string();
        assert!(e.contains("/r/etc/passwd"), "{e}");
        // Without /etc/group a named user just has no memberships.
        let c = lookup("app", &db("/etc/passwd", Some(PASSWD)), &none_g).unwrap();
        assert_eq!(c.groups, [1001]);
        let e = lookup("app:data", &db("/etc/passwd", Some(PASSWD)), &none_g)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/r/etc/group"), "{e}");
    }

    #[test]
    fn line_parsers() {
        assert_eq!(
            parse_passwd_line("a:x:1:2:g:/h:/s"),
            Some(PasswdEntry {
                name: "a",
                uid: 1,
                gid: 2,
                home: "/h"
            })
        );
        assert_eq!(parse_passwd_line(":x:1:2:g:/h:/s"), None);
        assert_eq!(parse_passwd_line("a:x:1"), None);
        assert_eq!(parse_passwd_line("a:x:-1:2"), None);
        let g = parse_group_line("g:x:5:u1,u2").unwrap();
        assert_eq!((g.name, g.gid), ("g", 5));
        assert!(g.has_member("u2") && !g.has_member("u") && !g.has_member(""));
        assert!(!parse_group_line("g:x:5:").unwrap().has_member(""));
        assert_eq!(parse_group_line("g:x"), None);
    }

    #[test]
    fn reads_from_a_root_dir() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(root.path().join("etc/group"), GROUP).unwrap();
        let c = resolve_in(root.path(), "app:data").unwrap();
        assert_eq!((c.uid, c.gid), (1000, 2001));
        let e = resolve_in(root.path(), "ghost").unwrap_err().to_string();
        assert!(
            e.contains(&root.path().join("etc/passwd").display().to_string()),
            "{e}"
        );
        // Absent files are fine for numeric ids.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve_in(empty.path(), "5").unwrap().gid, 0);
    }
}
