//! A property test of the migration: random trees, random writers changing
//! the data directory while sharelink runs, random SIGKILLs, and after every
//! step the invariant: every version a writer last put at a path, and every
//! baked entry nobody changed, exists whole in the app directory, the share
//! target or a set-aside copy. At the end, a quiet rerun links.
//!
//! `SHARELINK_TEST_SEED` repeats a run (each trial's choices come from the
//! seed and the trial's number, whatever thread runs it),
//! `SHARELINK_PROPERTY_TRIALS` sets the number of trials and
//! `SHARELINK_PROPERTY_THREADS` how many run at once ([`THREADS`]),
//! `SHARELINK_PROPERTY_RACER=1` adds [`race`] to every step.
//! Without them: 12 trials, and with `CI=true` [`CI_TRIALS`] (stopping
//! early only past [`CI_BUDGET`]): the races it exists to catch (a writer
//! and a delete meeting, with or without a kill) showed up about once in a
//! hundred trials.

use crate::support::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// With `CI=true` (and no `SHARELINK_PROPERTY_TRIALS`): this many trials,
/// unless `CI_BUDGET` has passed first (no new trial starts then).
const CI_TRIALS: u64 = 200;
const CI_BUDGET: Duration = Duration::from_secs(285);
/// Trials run at once: most of a trial is waiting (settling, timed kills,
/// sharelink's pauses between passes), and a busy machine is where the
/// races are.
const THREADS: usize = 12;

/// The content each path must still have somewhere.
type Model = BTreeMap<PathBuf, Vec<u8>>;

/// Versions a writer's append did not extend, because the file it opened
/// at that path was another version: after the symlink swap, an app path
/// the share held with other bytes (`if-empty`, `merge`) leads to the
/// share's version, the app's having been set aside. Each must still exist
/// somewhere too.
type Superseded = Arc<Mutex<Vec<(PathBuf, Vec<u8>)>>>;

/// What the writer did, for the report of a failure: (op number, what,
/// path, accepted, microseconds since the step's writer started, the link
/// count of the file it wrote into, taken before closing it: 0 means the
/// write went into a file that had no name any more).
type Ops = Arc<Mutex<Vec<(u64, &'static str, PathBuf, bool, u128, u64)>>>;

/// Random changes through the app path, as a pipeline makes them. Each
/// one the kernel accepted updates the model.
#[allow(clippy::too_many_arguments)]
fn mutate(
    app: PathBuf,
    model: Arc<Mutex<Model>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Ops,
    t0: std::time::Instant,
    turn: Arc<Mutex<()>>,
    superseded: Superseded,
) {
    let mut rng = Rng(seed | 1);
    let mut n = 0;
    let log = |n: u64, what: &'static str, p: &Path, ok: bool, nlink: u64| {
        ops.lock().unwrap().push((
            n,
            what,
            p.to_path_buf(),
            ok,
            t0.elapsed().as_micros(),
            nlink,
        ));
    };
    use std::os::unix::fs::MetadataExt;
    let links = |f: &fs::File| f.metadata().map_or(u64::MAX, |m| m.nlink());
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let keys: Vec<PathBuf> = model.lock().unwrap().keys().cloned().collect();
        let pick = keys[rng.below(keys.len() as u64) as usize].clone();
        // One write at a time with the racer: the model's order is the
        // file's.
        let _turn = turn.lock().unwrap();
        match rng.below(4) {
            // Append a line (open, write, close); half the time the file
            // stays open a moment between two halves of the line, as a
            // pipeline's log does.
            0 => {
                let line = format!("appended {n}\n").into_bytes();
                let hold = Duration::from_micros(rng.below(2) * (1000 + rng.below(20_000)));
                let mut nlink = u64::MAX;
                // What the file held when opened: the version this
                // append extends.
                let mut base = Vec::new();
                let ok = fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(app.join(&pick))
                    .and_then(|mut f| {
                        std::io::Read::read_to_end(&mut f, &mut base)?;
                        let (a, b) = line.split_at(line.len() / 2);
                        f.write_all(a)?;
                        std::thread::sleep(hold);
                        f.write_all(b)?;
                        nlink = links(&f);
                        Ok(())
                    })
                    .is_ok();
                log(n, "append", &pick, ok, nlink);
                if ok {
                    let mut model = model.lock().unwrap();
                    let was = model.get_mut(&pick).unwrap();
                    if *was != base {
                        log(n, "appended to another version", &pick, true, nlink);
                        superseded.lock().unwrap().push((pick, was.clone()));
                        *was = base;
                    }
                    was.extend_from_slice(&line);
                }
            }
            // Rewrite in place.
            1 => {
                let text = format!("rewritten {n}").into_bytes();
                // `fs::write`: open with O_CREAT | O_TRUNC, write, close.
                let mut nlink = u64::MAX;
                let ok = fs::File::create(app.join(&pick))
                    .and_then(|mut f| {
                        f.write_all(&text)?;
                        nlink = links(&f);
                        Ok(())
                    })
                    .is_ok();
                log(n, "rewrite", &pick, ok, nlink);
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
                let mut nlink = u64::MAX;
                let ok = rel
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or(Ok(()), |p| fs::create_dir(app.join(p)))
                    .and_then(|_| fs::File::create(app.join(&rel)))
                    .and_then(|mut f| {
                        f.write_all(&text)?;
                        nlink = links(&f);
                        Ok(())
                    })
                    .is_ok();
                log(n, "create", &rel, ok, nlink);
                if ok {
                    model.lock().unwrap().insert(rel, text);
                }
            }
        }
        drop(_turn);
        std::thread::sleep(Duration::from_micros(300 + rng.below(3000)));
    }
}

/// Whether steps run [`race`] too (`SHARELINK_PROPERTY_RACER=1`). Not by
/// default: it makes a writer's open meet a delete often enough that a
/// kill in between loses that writer's data about once in a hundred
/// trials, a window still open (docs/reliability.md, Known limits).
fn racer() -> bool {
    std::env::var("SHARELINK_PROPERTY_RACER").is_ok_and(|v| v == "1")
}

/// Opens of random files for writing, every 70 to 170 us, that write
/// only when the open returned a file with no name any more (its delete
/// and this open met): what is written then must be put back like any
/// write. Other opens change nothing, so the file stays deletable and the
/// deletes go on meeting opens.
fn race(
    app: PathBuf,
    model: Arc<Mutex<Model>>,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Ops,
    t0: std::time::Instant,
    turn: Arc<Mutex<()>>,
) {
    use std::os::unix::fs::MetadataExt;
    let mut rng = Rng(seed | 1);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let keys: Vec<PathBuf> = model.lock().unwrap().keys().cloned().collect();
        let pick = keys[rng.below(keys.len() as u64) as usize].clone();
        {
            let _turn = turn.lock().unwrap();
            if let Ok(mut f) = fs::OpenOptions::new().append(true).open(app.join(&pick)) {
                if f.metadata().is_ok_and(|m| m.nlink() == 0) {
                    let line = format!("raced {n}\n").into_bytes();
                    let ok = f.write_all(&line).is_ok();
                    ops.lock().unwrap().push((
                        1_000_000 + n,
                        "raced",
                        pick.clone(),
                        ok,
                        t0.elapsed().as_micros(),
                        0,
                    ));
                    if ok {
                        model
                            .lock()
                            .unwrap()
                            .get_mut(&pick)
                            .unwrap()
                            .extend_from_slice(&line);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_micros(20 + rng.below(100)));
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

/// The paths whose last version (or a superseded one) is nowhere, with
/// the content wanted.
fn lost(
    model: &Model,
    superseded: &[(PathBuf, Vec<u8>)],
    app: &Path,
    target: &Path,
    share: &Path,
) -> Vec<(PathBuf, Vec<u8>)> {
    let places = places(app, target, share);
    model
        .iter()
        .chain(superseded.iter().map(|(p, v)| (p, v)))
        .filter(|(rel, want)| {
            !places
                .iter()
                .any(|p| fs::read(p.join(rel)).is_ok_and(|got| got == **want))
        })
        .map(|(rel, want)| (rel.clone(), want.clone()))
        .collect()
}

fn check(
    model: &Model,
    superseded: &[(PathBuf, Vec<u8>)],
    app: &Path,
    target: &Path,
    share: &Path,
    what: &str,
) {
    let lost = lost(model, superseded, app, target, share);
    assert!(
        lost.is_empty(),
        "{what}: the last version of {} is nowhere",
        lost[0].0.display()
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
    for (n, what, p, ok, us, nlink) in ops.lock().unwrap().iter() {
        if p == lost {
            let nameless = if *nlink == 0 {
                " (written into a file that had no name any more)"
            } else {
                ""
            };
            s += &format!("  writer op {n} at {us} us: {what} ok={ok} nlink={nlink}{nameless}\n");
        }
    }
    let nameless = ops
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.3 && o.5 == 0)
        .count();
    s += &format!("  writes this step into files that had no name any more: {nameless}\n");
    if fs::symlink_metadata(app).is_ok_and(|m| m.is_dir()) {
        for e in entries_containing(app, "sharelink") {
            s += &format!("  sharelink name in app: {e}\n");
        }
    }
    s
}

#[derive(Default, Clone, Copy)]
struct Tally {
    trials: u64,
    steps: u64,
    kills: u64,
    paths: usize,
    /// Writes that went into a file with no name any more (a delete and
    /// an open met), each of which had to be put back.
    nameless: u64,
}

#[test]
fn random_trees_writers_and_kills_lose_nothing() {
    let seed = seed("random_trees_writers_and_kills_lose_nothing");
    let (trials, budget) = match std::env::var("SHARELINK_PROPERTY_TRIALS") {
        Ok(_) => (knob("SHARELINK_PROPERTY_TRIALS", 12) as u64, None),
        Err(_) if in_ci() => (CI_TRIALS, Some(CI_BUDGET)),
        Err(_) => (12, None),
    };
    let threads = knob("SHARELINK_PROPERTY_THREADS", THREADS).max(1);
    let started = std::time::Instant::now();
    let next = std::sync::atomic::AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let total = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    // A failing trial stops the others from starting new ones.
                    struct Stop<'a>(&'a AtomicBool);
                    impl Drop for Stop<'_> {
                        fn drop(&mut self) {
                            if std::thread::panicking() {
                                self.0.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    let _stop = Stop(&failed);
                    loop {
                        if failed.load(Ordering::Relaxed)
                            || budget.is_some_and(|b| started.elapsed() >= b)
                        {
                            return;
                        }
                        let trial = next.fetch_add(1, Ordering::Relaxed);
                        if trial >= trials {
                            return;
                        }
                        let t = run_trial(seed, trial);
                        let mut all = total.lock().unwrap();
                        all.trials += 1;
                        all.steps += t.steps;
                        all.kills += t.kills;
                        all.paths += t.paths;
                        all.nameless += t.nameless;
                    }
                })
            })
            .collect();
        let mut first = None;
        for w in workers {
            if let Err(p) = w.join() {
                first.get_or_insert(p);
            }
        }
        if let Some(p) = first {
            std::panic::resume_unwind(p);
        }
    });
    let t = *total.lock().unwrap();
    eprintln!(
        "seed {seed}: {} trials ({threads} at once), {} steps, {} kills, {} paths tracked, {} writes into a file being deleted, nothing lost ({} s)",
        t.trials,
        t.steps,
        t.kills,
        t.paths,
        t.nameless,
        started.elapsed().as_secs()
    );
}

/// One trial: its choices come from `seed` and its number alone.
fn run_trial(seed: u64, trial: u64) -> Tally {
    let mut rng = Rng((seed ^ trial.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    for _ in 0..4 {
        rng.next();
    }
    let mut tally = Tally::default();
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
    let superseded: Superseded = Default::default();
    std::thread::sleep(Duration::from_millis(120));
    for step in 0..6 {
        tally.steps += 1;
        let what = format!("seed {seed} trial {trial} step {step} ({mode})");
        let stop = Arc::new(AtomicBool::new(false));
        let ops: Ops = Default::default();
        let t0 = std::time::Instant::now();
        let turn = Arc::new(Mutex::new(()));
        let writer = (rng.below(3) != 0).then(|| {
            let (app, model, stop, s) = (app.clone(), model.clone(), stop.clone(), rng.next());
            let (ops, turn, sup) = (ops.clone(), turn.clone(), superseded.clone());
            std::thread::spawn(move || mutate(app, model, s, stop, ops, t0, turn, sup))
        });
        let racer = racer().then(|| {
            let (app, model, stop, s) = (app.clone(), model.clone(), stop.clone(), rng.next());
            let (ops, turn) = (ops.clone(), turn.clone());
            std::thread::spawn(move || race(app, model, s, stop, ops, t0, turn))
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
            tally.kills += 1;
        }
        let o = child.wait_with_output().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in [writer, racer].into_iter().flatten() {
            w.join().unwrap();
        }
        tally.nameless += ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.3 && o.5 == 0)
            .count() as u64;
        if !killed {
            assert!(matches!(code(&o), 0 | 74), "{what}: {}", stderr(&o));
        }
        {
            let model = model.lock().unwrap();
            let sup = superseded.lock().unwrap().clone();
            let lost = lost(&model, &sup, &app, &target, &sb.share);
            if !lost.is_empty() {
                let fps = fs::read_to_string(&fplog).unwrap_or_default();
                let tail: Vec<&str> = fps.lines().rev().take(12).collect();
                let mut counts = BTreeMap::new();
                for l in fps.lines() {
                    *counts.entry(l).or_insert(0) += 1;
                }
                let mut diag = String::new();
                for (rel, want) in &lost {
                    diag += &explain(rel, want, &app, &target, &sb.share, &ops);
                }
                panic!(
                    "{what}: the last version of {} is nowhere ({} lost)\n\
                     sharelink spawned at {spawned_us} us, killed={killed} (in the deletes: {in_prune}) at {killed_us} us, code {}\n\
                     {diag}failpoints reached: {counts:?}; last (newest first): {tail:?}\n\
                     sharelink's stderr:\n{}",
                    lost[0].0.display(),
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
    let sup = superseded.lock().unwrap().clone();
    check(&model, &sup, &app, &target, &sb.share, &what);
    tally.paths += model.len();
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
    tally
}
