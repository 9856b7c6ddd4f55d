//! Hostile and odd input: symlinks planted in the share at every level,
//! thousands of links, and names that break naive code (non-UTF-8, spaces, newlines, 255 bytes, 200 levels deep).
//! None of these need root: plain directories, `require_mount = false`.

use crate::support::*;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

#[test]
fn symlink_planted_in_the_share_at_each_level_is_never_followed() {
    // share path a/b/c/data with dirs in/deep, and sharelink's own areas
    // (locks, displaced copies). Along the share path both with the app
    // path missing (the link is made) and baked (the data migrates); the
    // own areas are used only when there is data to move.
    let links = "\"x/data\" = { share = \"a/b/c/data\", dirs = [\"in/deep\"] }";
    let path_levels = [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/data",
        "a/b/c/data/in",
        "a/b/c/data/in/deep",
    ];
    let own_levels = [
        ".sharelink",
        ".sharelink/locks",
        ".sharelink/displaced",
        ".sharelink/displaced/a",
    ];
    let levels = path_levels
        .iter()
        .flat_map(|l| [(*l, false), (*l, true)])
        .chain(own_levels.iter().map(|l| (*l, true)));
    let mut refused = 0;
    for (level, baked) in levels {
        let b = Sandbox::new(links);
        // Outside the share: a mirror that following the symlink would
        // happily write into.
        let outside = b.path("outside");
        for d in [
            "b/c/data/in/deep",
            "c/data/in/deep",
            "data/in/deep",
            "in/deep",
            "deep",
            "locks",
            "displaced/a",
            "a",
        ] {
            fs::create_dir_all(outside.join(d)).unwrap();
        }
        fs::write(outside.join("precious"), "do not touch").unwrap();
        let displaced = level.starts_with(".sharelink/displaced");
        if baked {
            make_tree(&b.app.join("x/data"), 30, 1000, 9);
        }
        if displaced {
            // The share target already holds other data: app-only files
            // would be displaced, through the planted symlink.
            fs::create_dir_all(b.share.join("a/b/c/data")).unwrap();
            fs::write(b.share.join("a/b/c/data/theirs"), "share data").unwrap();
        }
        let at = b.share.join(level);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, &at).unwrap();
        let outside_before = snapshot(&outside);
        let app_before = snapshot(&b.app);
        let share_before = snapshot(&b.share);
        let what = format!("symlink at {level}, baked={baked}");
        let o = sharelink(&b.config).arg("link").output().unwrap();
        assert_eq!(code(&o), 65, "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("symlink inside the share"), "{what}: {err}");
        assert!(
            err.contains(&*at.to_string_lossy()),
            "{what}: the message names the symlink: {err}"
        );
        assert_eq!(
            snapshot(&outside),
            outside_before,
            "{what}: wrote outside the share"
        );
        assert_eq!(snapshot(&b.app), app_before, "{what}: app changed");
        // Nothing in the share changed, apart from sharelink's own lock
        // directory (left empty) where it got as far as taking the lock.
        let mut share_after = snapshot(&b.share);
        let locks = Path::new(".sharelink/locks");
        if !share_before.contains_key(locks) && share_after.get(locks) == Some(&Node::Dir) {
            share_after.remove(locks);
        }
        assert_eq!(share_after, share_before, "{what}: share changed");
        assert!(fs::symlink_metadata(&at).unwrap().file_type().is_symlink());
        // dry-run and status refuse too, without touching anything.
        expect_code(
            &sharelink(&b.config)
                .args(["link", "--dry-run"])
                .output()
                .unwrap(),
            if level.starts_with(".sharelink") {
                0
            } else {
                65
            },
        );
        expect_code(&sharelink(&b.config).arg("status").output().unwrap(), 1);
        assert_eq!(
            snapshot(&outside),
            outside_before,
            "{what}: wrote outside the share"
        );
        refused += 1;
    }
    // sharelink's own staging name planted as a symlink: only the symlink
    // is removed (it is sharelink's name), the outside is untouched and the
    // migration completes.
    let b = Sandbox::new(links);
    let outside = b.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), "do not touch").unwrap();
    make_tree(&b.app.join("x/data"), 30, 1000, 9);
    let data = snapshot(&b.app.join("x/data"));
    fs::create_dir_all(b.share.join("a/b/c")).unwrap();
    std::os::unix::fs::symlink(&outside, b.share.join("a/b/c/.data.sharelink-staging")).unwrap();
    let outside_before = snapshot(&outside);
    let o = sharelink(&b.config).arg("link").output().unwrap();
    expect_code(&o, 0);
    assert_eq!(snapshot(&outside), outside_before);
    let mut got = snapshot(&b.share.join("a/b/c/data"));
    got.remove(Path::new("in/deep"));
    got.remove(Path::new("in"));
    assert_eq!(got, data);
    report(&format!(
        "hostile share: symlink to outside planted in {refused} places (4 path components and 2 dirs levels, each with the app path missing and baked; .sharelink, locks, displaced x2): exit 65 every time naming the symlink, 0 bytes written outside or in the share; planted staging symlink: removed, outside untouched"
    ));
}

#[test]
fn ten_thousand_links() {
    const N: usize = 10_000;
    let mut links = String::new();
    for i in 0..N {
        // Spread over nested app paths and share paths, some table form.
        if i % 10 == 0 {
            links.push_str(&format!(
                "\"g{}/l{i}\" = {{ share = \"s{}/t{i}\", dirs = [\"in\"] }}\n",
                i % 97,
                i % 89
            ));
        } else {
            links.push_str(&format!("\"g{}/l{i}\" = \"s{}/t{i}\"\n", i % 97, i % 89));
        }
    }
    let b = Sandbox::new(&links);
    // A hundred of them have baked data.
    for i in (0..N).step_by(100) {
        let d = b.app.join(format!("g{}/l{i}", i % 97));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("baked.txt"), format!("data {i}")).unwrap();
    }
    let t0 = Instant::now();
    let o = sharelink(&b.config).arg("link").output().unwrap();
    let took_link = t0.elapsed();
    expect_code(&o, 0);
    let t1 = Instant::now();
    let o = sharelink(&b.config).arg("status").output().unwrap();
    let took_status = t1.elapsed();
    expect_code(&o, 0);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("linked"))
            .count(),
        N
    );
    for i in 0..N {
        let app = b.app.join(format!("g{}/l{i}", i % 97));
        let target = b.share.join(format!("s{}/t{i}", i % 89));
        assert_eq!(fs::read_link(&app).unwrap(), target);
        if i % 100 == 0 {
            assert_eq!(
                fs::read_to_string(target.join("baked.txt")).unwrap(),
                format!("data {i}")
            );
        }
    }
    let o = sharelink(&b.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    expect_code(&o, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["links"].as_array().unwrap().len(), N);
    // A re-run is cheap, finds every link made, and changes nothing.
    let t2 = Instant::now();
    let o = sharelink(&b.config).arg("link").output().unwrap();
    let took_rerun = t2.elapsed();
    expect_code(&o, 0);
    assert_eq!(stderr(&o).matches("already linked").count(), N);
    assert_eq!(leftovers(&b.app, &b.share), Vec::<String>::new());
    report(&format!(
        "10,000 links (100 with baked data): link exit 0 in {took_link:.2?}, status exit 0 in {took_status:.2?}, re-run in {took_rerun:.2?} (debug build)"
    ));
}

/// Names that break naive code, and a tree 200 levels deep.
fn odd_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let names: Vec<Vec<u8>> = vec![
        b"\xff\xfe not utf-8 \x80".to_vec(),
        b"latin1 caf\xe9".to_vec(),
        b"with space".to_vec(),
        b" leading and trailing ".to_vec(),
        b"new\nline".to_vec(),
        b"\n".to_vec(),
        b"tab\there".to_vec(),
        b"back\\slash".to_vec(),
        b"quote\"s'".to_vec(),
        b"-dash".to_vec(),
        b"*?[glob]".to_vec(),
        b"%2F not a slash".to_vec(),
        "unicode données 数据 🚀".as_bytes().to_vec(),
        vec![b'n'; 255],
        [vec![0xe9u8; 200], vec![b'x'; 55]].concat(),
        b".hidden".to_vec(),
        b"..dots".to_vec(),
        b"x.sharelink-staging".to_vec(),
    ];
    for (i, n) in names.iter().enumerate() {
        let name = OsStr::from_bytes(n);
        fs::write(root.join(name), format!("file {i}").repeat(i + 1)).unwrap();
        let d = root.join(format!("dir{i}")).join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(name), vec![i as u8; 100 * i]).unwrap();
        std::os::unix::fs::symlink(Path::new("..").join(name), d.join(format!("link{i}"))).unwrap();
        std::os::unix::fs::symlink(name, root.join(format!("sym{i}"))).unwrap();
    }
    fs::create_dir_all(root.join(OsStr::from_bytes(b"empty \xff dir"))).unwrap();
    // 200 levels deep, a file at the bottom and half-way.
    let mut deep = root.join("deep");
    for level in 0..200 {
        deep.push(format!("d{level}"));
        if level == 100 {
            fs::create_dir_all(&deep).unwrap();
            fs::write(deep.join("halfway"), "50%").unwrap();
        }
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), "200 levels down").unwrap();
}

#[test]
fn odd_names_and_deep_trees_migrate_byte_for_byte() {
    let long = "L".repeat(255);
    let b = Sandbox::new(&format!(
        "\"my data/with space\" = \"share dir/with space\"\n\
         \"données/数据\" = \"données/数据\"\n\
         {long:?} = {long:?}\n\
         \"odd\" = {{ share = \"odd\", dirs = [\"in put\", \"out\\nput\"] }}"
    ));
    let apps = ["my data/with space", "données/数据", long.as_str(), "odd"];
    for a in apps {
        odd_tree(&b.app.join(a));
    }
    let before: Vec<_> = apps.iter().map(|a| snapshot(&b.app.join(a))).collect();
    let entries: usize = before.iter().map(|t| t.len()).sum();
    let o = sharelink(&b.config).arg("link").output().unwrap();
    expect_code(&o, 0);
    let shares = ["share dir/with space", "données/数据", long.as_str(), "odd"];
    for (i, s) in shares.iter().enumerate() {
        let mut got = snapshot(&b.share.join(s));
        if *s == "odd" {
            got.remove(Path::new("in put"));
            got.remove(Path::new("out\nput"));
        }
        let (m, c, x, msgs) = diff(&before[i], &got, true, 5);
        assert_eq!((m, c, x), (0, 0, 0), "{s}: {msgs:?}");
        assert_eq!(fs::read_link(b.app.join(apps[i])).unwrap(), b.share.join(s));
    }
    expect_code(&sharelink(&b.config).arg("status").output().unwrap(), 0);
    expect_code(
        &sharelink(&b.config)
            .args(["status", "--json"])
            .output()
            .unwrap(),
        0,
    );
    assert_eq!(leftovers(&b.app, &b.share), Vec::<String>::new());
    report(&format!(
        "odd names: 4 links (spaces, non-ASCII, 255-byte link names) x trees with non-UTF-8/newline/tab/255-byte names and 200 levels of directories ({entries} entries): exit 0, all equal byte for byte with modes"
    ));
}

/// Under the soft limit of 1,024 open files that container runtimes may
/// set: a data directory with 1,500 subdirectories side by side and one
/// 1,500 levels deep migrate (before, both failed with EMFILE on every
/// start), and the command still starts with the limit it was given.
#[test]
fn wide_and_deep_trees_migrate_under_a_low_open_files_limit() {
    let sb = Sandbox::new("\"wide\" = \"wide\"\n\"deep\" = \"deep\"");
    let wide = sb.app.join("wide");
    for i in 0..1500 {
        let d = wide.join(format!("s{i:05}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("page.html"), format!("page {i}")).unwrap();
    }
    let mut deep = sb.app.join("deep");
    for _ in 0..1500 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), "at the bottom").unwrap();
    let (wide_before, deep_before) = (snapshot(&wide), snapshot(&sb.app.join("deep")));
    std::thread::sleep(std::time::Duration::from_millis(150));
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -S -n 1024 && exec \"$0\" --config \"$1\" run -- sh -c 'ulimit -n'")
        .arg(bin())
        .arg(&sb.config)
        .output()
        .unwrap();
    expect_code(&o, 0);
    assert_eq!(stdout(&o).trim(), "1024", "the command's limit");
    assert_eq!(snapshot(&sb.share.join("wide")), wide_before);
    assert_eq!(snapshot(&sb.share.join("deep")), deep_before);
}
