//! A property test of the migration: random trees, random writers changing
//! the data directory while sharelink runs, random SIGKILLs, and after every
//! step the invariant: every version a writer last put at a path, and every
//! baked entry nobody changed, exists whole in the app directory, the share
//! target or a set-aside copy. At the end, a quiet rerun links.
//!
//! `SHARELINK_TEST_SEED` repeats a run, `SHARELINK_PROPERTY_TRIALS` sets
//! the number of trials. Without it: 12 trials, and with `CI=true` as many
//! more as fit in [`CI_BUDGET`] (up to [`CI_MAX_TRIALS`]): the races it
//! exists to catch (a writer and a kill meeting a delete) show up in about
//! one trial in a hundred.

use crate::support::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// With `CI=true` (and no `SHARELINK_PROPERTY_TRIALS`), trials go on past
/// the first 12 until this much time has passed, up to `CI_MAX_TRIALS`.
const CI_BUDGET: Duration = Duration::from_secs(150);
const CI_MAX_TRIALS: u64 = 200;

/// The content each path must still have somewhere.
type Model = BTreeMap<PathBuf, Vec<u8>>;

/// What the writer did, for the report of a failure: (op number, what,
/// path, accepted, microseconds since the step's writer started).
type Ops = Arc<Mutex<Vec<(u64, &'static str, PathBuf, bool, u128)>>>;

/// Random changes through the app path, as a pipeline makes them. Each
/// one the kernel accepted updates the model.
fn mutate(
    app: PathBuf,
    model: Arc<Mutex<Model>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Ops,
    t0: std::time::Instant,
) {
    let mut rng = Rng(seed | 1);
    let mut n = 0;
    let log = |n: u64, what: &'static str, p: &Path, ok: bool| {
        ops.lock()
            .unwrap()
            .push((n, what, p.to_path_buf(), ok, t0.elapsed().as_micros()));
    };
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let keys: Vec<PathBuf> = model.lock().unwrap().keys().cloned().collect();
        let pick = keys[rng.below(keys.len() as u64) as usize].clone();
        match rng.below(4) {
            // Append a line (open, write, close); half the time the file
            // stays open a moment between two halves of the line, as a
            // pipeline's log does.
            0 => {
                let line = format!("appended {n}\n").into_bytes();
                let hold = Duration::from_micros(rng.below(2) * (1000 + rng.below(20_000)));
                let ok = fs::OpenOptions::new()
                    .append(true)
                    .open(app.join(&pick))
                    .and_then(|mut f| {
                        let (a, b) = line.split_at(line.len() / 2);
                        f.write_all(a)?;
                        std::thread::sleep(hold);
                        f.write_all(b)
                    })
                    .is_ok();
                log(n, "append", &pick, ok);
                if ok {
                    model
                        .lock()
                        .unwrap()
                        .get_mut(&pick)
                        .unwrap()
                        .extend_from_slice(&line);
                }
            }
            // Rewrite in place.
            1 => {
                let text = format!("rewritten {n}").into_bytes();
                let ok = fs::write(app.join(&pick), &text).is_ok();
                log(n, "rewrite", &pick, ok);
                if ok {
                    model.lock().unwrap().insert(pick, text);
                }
            }
            // A new file (in a new directory now and then).
            _ => {
                let rel = if rng.below(5) == 0 {
                    PathBuf::from(format!("new{n}/file"))
                } else {
                    PathBuf::from(format!("made{n}"))
                };
                let text = format!("made {n}").into_bytes();
                let ok = rel
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or(Ok(()), |p| fs::create_dir(app.join(p)))
                    .and_then(|_| fs::write(app.join(&rel), &text))
                    .is_ok();
                log(n, "create", &rel, ok);
                if ok {
                    model.lock().unwrap().insert(rel, text);
                }
            }
        }
        std::thread::sleep(Duration::from_micros(300 + rng.below(3000)));
    }
}

/// Where versions of a path can be: the app directory, the share target,
/// set-aside copies.
fn places(app: &Path, target: &Path, share: &Path) -> Vec<PathBuf> {
    let mut v = vec![target.to_path_buf()];
    if fs::symlink_metadata(app).is_ok_and(|m| m.is_dir()) {
        v.push(app.to_path_buf());
    }
    if let Ok(rd) = fs::read_dir(share.join(".sharelink/displaced/data")) {
        v.extend(rd.map(|e| e.unwrap().path()));
    }
    v
}

/// The paths whose last version is nowhere.
fn lost(model: &Model, app: &Path, target: &Path, share: &Path) -> Vec<PathBuf> {
    let places = places(app, target, share);
    model
        .iter()
        .filter(|(rel, want)| {
            !places
                .iter()
                .any(|p| fs::read(p.join(rel)).is_ok_and(|got| got == **want))
        })
        .map(|(rel, _)| rel.clone())
        .collect()
}

fn check(model: &Model, app: &Path, target: &Path, share: &Path, what: &str) {
    let lost = lost(model, app, target, share);
    assert!(
        lost.is_empty(),
        "{what}: the last version of {} is nowhere",
        lost[0].display()
    );
}

/// A short view of some bytes.
fn brief(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() <= 60 {
        format!("{} bytes {s:?}", b.len())
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{} bytes ...{tail:?}", b.len())
    }
}

/// Everything known about a lost path, to find the mechanism.
fn explain(lost: &Path, want: &[u8], app: &Path, target: &Path, share: &Path, ops: &Ops) -> String {
    let mut s = format!("lost {}: wanted {}\n", lost.display(), brief(want));
    for p in places(app, target, share) {
        match fs::read(p.join(lost)) {
            Ok(b) => s += &format!("  {}: {}\n", p.display(), brief(&b)),
            Err(e) => s += &format!("  {}: {e}\n", p.display()),
        }
    }
    for (n, what, p, ok, us) in ops.lock().unwrap().iter() {
        if p == lost {
            s += &format!("  writer op {n} at {us} us: {what} ok={ok}\n");
        }
    }
    if fs::symlink_metadata(app).is_ok_and(|m| m.is_dir()) {
        for e in entries_containing(app, "sharelink") {
            s += &format!("  sharelink name in app: {e}\n");
        }
    }
    s
}

#[test]
fn random_trees_writers_and_kills_lose_nothing() {
    let seed = seed("random_trees_writers_and_kills_lose_nothing");
    let (min_trials, budget) = match std::env::var("SHARELINK_PROPERTY_TRIALS") {
        Ok(_) => (knob("SHARELINK_PROPERTY_TRIALS", 12) as u64, Duration::ZERO),
        Err(_) if in_ci() => (12, CI_BUDGET),
        Err(_) => (12, Duration::ZERO),
    };
    let started = std::time::Instant::now();
    let mut rng = Rng(seed);
    let (mut kills, mut steps, mut mutations) = (0, 0, 0);
    let mut trials = 0;
    while trials < min_trials || started.elapsed() < budget && trials < CI_MAX_TRIALS {
        let trial = trials;
        trials += 1;
        let mode = if rng.below(2) == 0 {
            "if-empty"
        } else {
            "merge"
        };
        let sb = Sandbox::new(&format!(
            "\"data\" = {{ share = \"data\", migrate = \"{mode}\" }}"
        ));
        let (app, target) = (sb.app.join("data"), sb.share.join("data"));
        make_tree(
            &app,
            50 + rng.below(400) as usize,
            1 + rng.below(200_000) as usize,
            rng.next(),
        );
        // Half the time the share already holds data, some of it at the
        // app's paths with other bytes.
        if rng.below(2) == 0 {
            make_tree(&target, 10 + rng.below(60) as usize, 2000, rng.next());
        }
        let share_before = if target.exists() {
            snapshot(&target)
        } else {
            BTreeMap::new()
        };
        let mut model: Model = BTreeMap::new();
        for (rel, n) in snapshot(&app) {
            if matches!(n, Node::File { .. }) {
                model.insert(rel.clone(), fs::read(app.join(&rel)).unwrap());
            }
        }
        let model = Arc::new(Mutex::new(model));
        std::thread::sleep(Duration::from_millis(120));
        for step in 0..6 {
            steps += 1;
            let what = format!("seed {seed} trial {trial} step {step} ({mode})");
            let stop = Arc::new(AtomicBool::new(false));
            let ops: Ops = Default::default();
            let t0 = std::time::Instant::now();
            let writer = (rng.below(3) != 0).then(|| {
                let (app, model, stop, s) = (app.clone(), model.clone(), stop.clone(), rng.next());
                let ops = ops.clone();
                std::thread::spawn(move || mutate(app, model, s, stop, ops, t0))
            });
            let fplog = sb.path(&format!("failpoints-{step}"));
            let mut child = sb
                .cmd()
                .arg("link")
                .env("SHARELINK_PARALLELISM", (1 + rng.below(4)).to_string())
                .env("SHARELINK_LOG", "debug")
                .env("SHARELINK_FAILPOINT_LOG", &fplog)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let spawned_us = t0.elapsed().as_micros();
            let kill_after = Duration::from_millis(rng.below(250));
            // Half the time the kill comes in the deletes, where writers
            // race them: a moment (up to 31 ms) after the first lease.
            let in_prune = rng.below(2) == 0;
            if in_prune {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::time::Instant::now() < deadline
                    && child.try_wait().unwrap().is_none()
                    && !fs::read_to_string(&fplog).is_ok_and(|l| l.contains("prune.leased"))
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(kill_after / 8);
            } else {
                std::thread::sleep(kill_after);
            }
            let killed = rng.below(3) != 0 && child.try_wait().unwrap().is_none();
            let mut killed_us = 0;
            if killed {
                killed_us = t0.elapsed().as_micros();
                child.kill().unwrap();
                kills += 1;
            }
            let o = child.wait_with_output().unwrap();
            stop.store(true, Ordering::Relaxed);
            if let Some(w) = writer {
                w.join().unwrap();
            }
            if !killed {
                assert!(matches!(code(&o), 0 | 74), "{what}: {}", stderr(&o));
            }
            {
                let model = model.lock().unwrap();
                let lost = lost(&model, &app, &target, &sb.share);
                if !lost.is_empty() {
                    let fps = fs::read_to_string(&fplog).unwrap_or_default();
                    let tail: Vec<&str> = fps.lines().rev().take(12).collect();
                    let mut counts = BTreeMap::new();
                    for l in fps.lines() {
                        *counts.entry(l).or_insert(0) += 1;
                    }
                    let mut diag = String::new();
                    for rel in &lost {
                        diag += &explain(rel, &model[rel], &app, &target, &sb.share, &ops);
                    }
                    panic!(
                        "{what}: the last version of {} is nowhere ({} lost)\n\
                         sharelink spawned at {spawned_us} us, killed={killed} (in the deletes: {in_prune}) at {killed_us} us, code {}\n\
                         {diag}failpoints reached: {counts:?}; last (newest first): {tail:?}\n\
                         sharelink's stderr:\n{}",
                        lost[0].display(),
                        lost.len(),
                        code(&o),
                        stderr(&o)
                    );
                }
            }
            if !killed && code(&o) == 0 {
                break;
            }
        }
        // Quiet now: the next run finishes.
        std::thread::sleep(Duration::from_millis(120));
        let o = sb.run(["link"]);
        expect_code(&o, 0);
        let what = format!("seed {seed} trial {trial} final");
        assert_eq!(fs::read_link(&app).unwrap(), target, "{what}");
        let model = model.lock().unwrap();
        check(&model, &app, &target, &sb.share, &what);
        mutations += model.len();
        // The share's own entries at paths the app never had are untouched.
        let now = snapshot(&target);
        for (rel, n) in &share_before {
            if !model.contains_key(rel) && !matches!(n, Node::Dir) {
                assert_eq!(
                    now.get(rel),
                    Some(n),
                    "{what}: share's {} changed",
                    rel.display()
                );
            }
        }
        assert!(
            entries_containing(&sb.share, "sharelink-staging").is_empty(),
            "{what}"
        );
        expect_code(&sb.run(["status"]), 0);
    }
    eprintln!(
        "seed {seed}: {trials} trials, {steps} steps, {kills} kills, {mutations} paths tracked, nothing lost ({} s)",
        started.elapsed().as_secs()
    );
}
