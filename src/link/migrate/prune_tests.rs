//! prune's unit tests: what it deletes and what it keeps (changed,
//! replaced, uncopied, held open for writing), hard links, putting back.

use super::*;
use std::fs;
use std::io::Write;
use std::path::Path;

/// An app directory under a temporary directory, its inventory, and
/// the identity of every non-directory as the doomed list would hold it.
fn app_with(files: &[&str]) -> (tempfile::TempDir, Dir, Inventory) {
    let t = tempfile::tempdir().unwrap();
    let app = t.path().join("app");
    for f in files {
        let p = app.join(f);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, f.as_bytes()).unwrap();
    }
    fs::create_dir_all(&app).unwrap();
    let dir = Dir::open(&app).unwrap();
    let inv = Inventory::scan(&dir, &app, &mut || Ok(())).unwrap();
    (t, dir, inv)
}

/// Every non-directory doomed at the identity the inventory saw, but
/// the names in `spare`.
fn doomed_but(inv: &Inventory, spare: &[&str]) -> Vec<Option<Identity>> {
    inv.entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let rel = inv.rel(i as Ix);
            (e.meta.kind != Kind::Dir && !spare.iter().any(|s| Path::new(s) == rel))
                .then_some(e.meta.id)
        })
        .collect()
}

fn run(t: &tempfile::TempDir, dir: &Dir, inv: &Inventory, doomed: &[Option<Identity>]) -> Pruned {
    run_then(t, dir, inv, doomed, &mut || Ok(())).unwrap()
}

/// [`run`] with `emptied`, and its result.
fn run_then(
    t: &tempfile::TempDir,
    dir: &Dir,
    inv: &Inventory,
    doomed: &[Option<Identity>],
    emptied: &mut dyn FnMut() -> Result<()>,
) -> Result<Pruned> {
    let app = t.path().join("app");
    prune(inv, dir, &app, doomed, &mut || Ok(()), emptied)
}

/// Inodes on which this process holds a lease (`/proc/locks`).
fn leased_inodes() -> Vec<u64> {
    let me = std::process::id().to_string();
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) != Some(&"LEASE") || f.get(4) != Some(&me.as_str()) {
                return None;
            }
            f.get(5)?.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn emptied_runs_once_all_went_while_the_last_lease_is_held_and_its_error_stands() {
    use std::os::unix::fs::MetadataExt;
    let (t, dir, inv) = app_with(&["a", "sub/b"]);
    let app = t.path().join("app");
    let inos = ["a", "sub/b"].map(|f| fs::metadata(app.join(f)).unwrap().ino());
    let doomed = doomed_but(&inv, &[]);
    let mut held_then = None;
    let r = run_then(&t, &dir, &inv, &doomed, &mut || {
        held_then = Some(leased_inodes().iter().any(|i| inos.contains(i)));
        Err(Error::Unsafe("clean-up failed".into()))
    });
    // The last file unlinked still had its lease when it ran.
    assert_eq!(held_then, Some(true), "emptied ran, during the hold");
    assert!(!leased_inodes().iter().any(|i| inos.contains(i)));
    assert!(r.is_err_and(|e| e.to_string().contains("clean-up failed")));
    assert!(
        dir.list().unwrap().is_empty(),
        "all was deleted all the same"
    );

    // Something kept: not emptied, not called.
    let (t, dir, inv) = app_with(&["a", "keep"]);
    let doomed = doomed_but(&inv, &["keep"]);
    let mut called = false;
    let p = run_then(&t, &dir, &inv, &doomed, &mut || {
        called = true;
        Ok(())
    });
    assert!(p.is_ok() && !called);
}

fn kept(inv: &Inventory, p: &Pruned) -> Vec<(String, Kept)> {
    let mut k: Vec<_> = p
        .kept
        .iter()
        .map(|&(ix, why)| (inv.rel(ix).display().to_string(), why))
        .collect();
    k.sort_by(|a, b| a.0.cmp(&b.0));
    k
}

#[test]
fn deletes_only_what_the_ledger_marks_and_has_not_changed() {
    let (t, dir, inv) = app_with(&["a", "b", "keep", "sub/c", "sub/d", "half/e", "half/f"]);
    let app = t.path().join("app");
    let doomed = doomed_but(&inv, &["keep", "half/f"]);
    // `b` changes after its copy was made: another size, another mtime.
    fs::OpenOptions::new()
        .append(true)
        .open(app.join("b"))
        .unwrap()
        .write_all(b" and more")
        .unwrap();
    let p = run(&t, &dir, &inv, &doomed);
    assert_eq!(
        kept(&inv, &p),
        vec![
            ("b".into(), Kept::Changed),
            ("half".into(), Kept::NotEmpty),
            ("half/f".into(), Kept::NoCopy),
            ("keep".into(), Kept::NoCopy),
        ]
    );
    // a, sub/c, sub/d, sub (emptied) and half/e.
    assert_eq!(p.deleted, 5);
    for gone in ["a", "sub", "half/e"] {
        assert!(!app.join(gone).exists(), "{gone} should be gone");
    }
    assert_eq!(fs::read(app.join("b")).unwrap(), b"b and more");
    assert_eq!(fs::read(app.join("keep")).unwrap(), b"keep");
    assert_eq!(fs::read(app.join("half/f")).unwrap(), b"half/f");
    // The app directory itself stays.
    assert!(app.is_dir());
}

#[test]
fn a_file_replaced_under_its_name_stays() {
    let (t, dir, inv) = app_with(&["a"]);
    let app = t.path().join("app");
    let doomed = doomed_but(&inv, &[]);
    // Same name, same content, another inode.
    fs::write(app.join("a.new"), "a").unwrap();
    fs::rename(app.join("a.new"), app.join("a")).unwrap();
    let p = run(&t, &dir, &inv, &doomed);
    assert_eq!(kept(&inv, &p), vec![("a".into(), Kept::Changed)]);
    assert_eq!(p.deleted, 0);
    assert!(app.join("a").exists());
}

#[test]
fn a_file_held_open_for_writing_stays() {
    let (t, dir, inv) = app_with(&["busy", "idle"]);
    let app = t.path().join("app");
    let doomed = doomed_but(&inv, &[]);
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(app.join("busy"))
        .unwrap();
    let p = run(&t, &dir, &inv, &doomed);
    drop(writer);
    assert_eq!(kept(&inv, &p), vec![("busy".into(), Kept::Busy)]);
    assert_eq!(fs::read(app.join("busy")).unwrap(), b"busy");
    assert!(!app.join("idle").exists());
}

#[test]
fn every_name_of_a_hard_link_goes() {
    // Deleting one name changes the ctime the others report; that
    // alone must not keep them.
    let (t, _, _) = app_with(&["one"]);
    let app = t.path().join("app");
    fs::hard_link(app.join("one"), app.join("two")).unwrap();
    fs::hard_link(app.join("one"), app.join("three")).unwrap();
    let dir = Dir::open(&app).unwrap();
    let inv = Inventory::scan(&dir, &app, &mut || Ok(())).unwrap();
    let doomed = doomed_but(&inv, &[]);
    // A moment after the scan, so that deleting the first name gives the
    // inode a ctime other than the scanned one (the other names would
    // look changed if the prune did not know that ctime was its own).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let p = run(&t, &dir, &inv, &doomed);
    assert_eq!(kept(&inv, &p), vec![]);
    assert_eq!(p.deleted, 3);
    assert_eq!(fs::read_dir(&app).unwrap().count(), 0);
}

#[test]
fn put_back_never_replaces_a_file_that_took_the_name() {
    let t = tempfile::tempdir().unwrap();
    let dir = Dir::open(t.path()).unwrap();
    fs::write(t.path().join("src"), "written by the writer").unwrap();
    let f = File::open(t.path().join("src")).unwrap();
    // The name is free: back under it.
    let to = put_back(&dir, OsStr::new("data"), &f).unwrap();
    assert_eq!(to, "data");
    assert_eq!(
        fs::read(t.path().join("data")).unwrap(),
        b"written by the writer"
    );
    // A new file took the name: beside it.
    fs::write(t.path().join("data"), "new").unwrap();
    let to = put_back(&dir, OsStr::new("data"), &f).unwrap();
    assert_eq!(to, "data.sharelink-rescued-2");
    assert_eq!(fs::read(t.path().join("data")).unwrap(), b"new");
    assert_eq!(
        fs::read(t.path().join(&to)).unwrap(),
        b"written by the writer"
    );
    // No temporary copy left behind.
    let names: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(RESCUING_SUFFIX))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn rescued_names_fit_in_name_max() {
    assert_eq!(rescued_name(OsStr::new("f"), 3), "f.sharelink-rescued-3");
    let long = "x".repeat(250);
    let n = rescued_name(OsStr::new(&long), 2);
    assert!(n.len() <= 255, "{}", n.len());
    assert_ne!(n, OsString::from(format!("{long}.sharelink-rescued-2")));
}
