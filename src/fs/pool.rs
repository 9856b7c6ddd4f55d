//! A small pool for filesystem work: jobs may add jobs (a directory job
//! adds its children). The calling thread does not run jobs: it keeps the
//! heartbeat (lock lease, progress, signals) going at a fixed pace however
//! long one job takes.
//!
//! Jobs are queued in lanes, one per directory they create entries in, and
//! handed out round-robin over the lanes: the kernel serialises creates in
//! one directory (the parent's lock is held across the round trip to the
//! share), so workers spread over directories keep a create in flight in
//! each of them instead of queueing on one directory's lock. Within a lane
//! the most recent job comes first. A job that opens a directory (and so
//! starts a lane of its own) is preferred in its lane, so subdirectories
//! start early, but it waits while a budget of lanes already have
//! jobs queued: the directories held open stay bounded however wide the
//! tree. It never waits when nothing else is queued, so the work cannot
//! stall.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

pub(crate) struct Queue<J> {
    state: Mutex<State<J>>,
    /// Wakes a worker: a job was pushed, or the work is over.
    work: Condvar,
    /// Wakes the calling thread: the work is over.
    done: Condvar,
    threads: usize,
    /// Set on the first error or when the heartbeat says stop; long jobs
    /// check it between chunks.
    pub(crate) stop: AtomicBool,
}

/// A directory's lane: the jobs that create entries in it.
pub(crate) type Lane = u32;

struct Jobs<J> {
    /// Jobs that open a directory of their own.
    opens: Vec<J>,
    other: Vec<J>,
}

struct State<J> {
    lanes: HashMap<Lane, Jobs<J>>,
    /// The lanes with jobs queued, each once, in the order they get a turn.
    ring: VecDeque<Lane>,
    queued: usize,
    /// Lanes whose `other` jobs are not all handed out: each holds its
    /// directory open.
    busy_lanes: usize,
    /// Opening jobs wait while this many lanes are busy.
    budget: usize,
    running: usize,
    /// Workers waiting for a job: a wake-up is a system call, made only
    /// when someone waits.
    idle: usize,
    error: Option<Error>,
}

impl<J> State<J> {
    fn new(budget: usize) -> State<J> {
        State {
            lanes: HashMap::new(),
            ring: VecDeque::new(),
            queued: 0,
            busy_lanes: 0,
            budget: budget.max(1),
            running: 0,
            idle: 0,
            error: None,
        }
    }

    fn finished(&self) -> bool {
        self.running == 0 && self.queued == 0
    }

    fn push(&mut self, lane: Lane, job: J, opens: bool) {
        let l = self.lanes.entry(lane).or_insert_with(|| Jobs {
            opens: Vec::new(),
            other: Vec::new(),
        });
        if l.opens.is_empty() && l.other.is_empty() {
            self.ring.push_back(lane);
        }
        if opens {
            l.opens.push(job);
        } else {
            if l.other.is_empty() {
                self.busy_lanes += 1;
            }
            l.other.push(job);
        }
        self.queued += 1;
    }

    /// The next job: from the lane whose turn it is, skipping lanes that
    /// hold only opening jobs while the budget is spent. Some lane always
    /// qualifies while jobs are queued: with the budget spent, some lane
    /// has other jobs.
    fn pop(&mut self) -> Option<J> {
        for _ in 0..self.ring.len() {
            let lane = *self.ring.front()?;
            let l = self.lanes.get_mut(&lane).expect("a lane in the ring");
            let job = if !l.opens.is_empty() && self.busy_lanes < self.budget {
                l.opens.pop()
            } else {
                let j = l.other.pop();
                if j.is_some() && l.other.is_empty() {
                    self.busy_lanes -= 1;
                }
                j
            };
            let empty = l.opens.is_empty() && l.other.is_empty();
            // Its turn is over either way.
            self.ring.rotate_left(1);
            if empty {
                self.ring.pop_back();
                self.lanes.remove(&lane);
            }
            if let Some(j) = job {
                self.queued -= 1;
                return Some(j);
            }
        }
        None
    }
}

impl<J> Queue<J> {
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a job in lane 0 (for work that is not spread over
    /// directories).
    pub(crate) fn push(&self, job: J) {
        self.push_to(0, job, false)
    }

    /// Queue a job in `lane`; `opens`: it opens a directory (and starts
    /// its lane).
    pub(crate) fn push_to(&self, lane: Lane, job: J, opens: bool) {
        let mut s = self.lock();
        s.push(lane, job, opens);
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.work.notify_one();
        }
    }

    /// Workers in the pool (to size the jobs they are given).
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Stop everyone; the first error is the one to report (later ones are
    /// its echoes: ECANCELED from jobs told to stop).
    fn fail(&self, e: Error) {
        let mut s = self.lock();
        s.error.get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
        drop(s);
        self.work.notify_all();
        self.done.notify_all();
    }
}

/// How often the heartbeat runs while jobs are in flight.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// Lanes with jobs queued before opening jobs wait, per worker: enough
/// directories to keep every worker busy, few enough that a wide tree
/// holds few open.
const LANES_PER_WORKER: usize = 4;

/// Run `initial` (in lane 0) and every job they push on `threads` worker
/// threads. `heartbeat` runs on the calling thread every [`HEARTBEAT`] and
/// once at the end; an error from it stops the work. Returns the first
/// error.
pub(crate) fn run<J: Send>(
    threads: usize,
    initial: Vec<J>,
    work: &(dyn Fn(J, &Queue<J>) -> Result<()> + Sync),
    heartbeat: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let initial = initial.into_iter().map(|j| (0, j)).collect();
    run_lanes(threads, initial, work, heartbeat)
}

/// [`run`] with the initial jobs each in its lane.
pub(crate) fn run_lanes<J: Send>(
    threads: usize,
    initial: Vec<(Lane, J)>,
    work: &(dyn Fn(J, &Queue<J>) -> Result<()> + Sync),
    heartbeat: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let threads = threads.max(1);
    let mut state = State::new((threads * LANES_PER_WORKER).max(16));
    for (lane, j) in initial {
        state.push(lane, j, false);
    }
    let q = Queue {
        state: Mutex::new(state),
        work: Condvar::new(),
        done: Condvar::new(),
        threads,
        stop: AtomicBool::new(false),
    };
    std::thread::scope(|scope| {
        for _ in 0..q.threads {
            scope.spawn(|| worker(&q, work));
        }
        let mut last = Instant::now();
        let mut s = q.lock();
        while !(s.finished() || q.stopped() && s.running == 0) {
            s = q
                .done
                .wait_timeout(s, HEARTBEAT)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if last.elapsed() >= HEARTBEAT && !q.stopped() {
                drop(s);
                last = Instant::now();
                if let Err(e) = heartbeat() {
                    q.fail(e);
                }
                s = q.lock();
            }
        }
        // Release the workers waiting for jobs that will not come.
        q.stop.store(true, Ordering::Relaxed);
        drop(s);
        q.work.notify_all();
    });
    let s = q.state.into_inner().unwrap_or_else(|p| p.into_inner());
    match s.error {
        Some(e) => Err(e),
        None => heartbeat(),
    }
}

/// One result per index, filled by workers in any order and read in order
/// once they are done.
pub(crate) struct Slots<T>(Vec<Mutex<Option<T>>>);

impl<T> Slots<T> {
    /// `n` empty slots.
    pub(crate) fn new(n: usize) -> Slots<T> {
        Slots((0..n).map(|_| Mutex::new(None)).collect())
    }

    /// Slot `i` holds `v` now.
    pub(crate) fn put(&self, i: usize, v: Option<T>) {
        *self.0[i].lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    pub(crate) fn set(&self, i: usize, v: T) {
        self.put(i, Some(v));
    }

    /// What each slot holds, in order.
    pub(crate) fn into_vec(self) -> Vec<Option<T>> {
        self.0
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}

/// `f` over `items` on up to `threads` threads, results in order. A few
/// items are done on the calling thread: starting threads costs more.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len() / 4).max(1);
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots = Slots::new(items.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                slots.set(i, f(item));
            });
        }
    });
    slots
        .into_vec()
        .into_iter()
        .map(|r| r.expect("every item mapped"))
        .collect()
}

fn worker<J>(q: &Queue<J>, work: &dyn Fn(J, &Queue<J>) -> Result<()>) {
    loop {
        let mut s = q.lock();
        let job = loop {
            if q.stopped() {
                return;
            }
            if let Some(j) = s.pop() {
                break j;
            }
            if s.running == 0 {
                // Nothing queued and nothing that could queue more.
                drop(s);
                q.work.notify_all();
                q.done.notify_all();
                return;
            }
            s.idle += 1;
            s = q.work.wait(s).unwrap_or_else(|p| p.into_inner());
            s.idle -= 1;
        };
        s.running += 1;
        drop(s);
        let r = work(job, q);
        let mut s = q.lock();
        s.running -= 1;
        let finished = s.finished();
        drop(s);
        match r {
            // The last job wakes everyone: the caller and the idle workers
            // have nothing left to wait for.
            Ok(()) if finished => {
                q.work.notify_all();
                q.done.notify_all();
            }
            Ok(()) => {}
            Err(e) => q.fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn slots_are_read_in_index_order_whoever_filled_them() {
        let slots = Slots::new(5);
        std::thread::scope(|scope| {
            for i in [4usize, 0, 2] {
                let slots = &slots;
                scope.spawn(move || slots.set(i, i * 10));
            }
        });
        slots.set(1, 7);
        slots.put(1, None);
        assert_eq!(
            slots.into_vec(),
            vec![Some(0), None, Some(20), None, Some(40)]
        );
    }

    #[test]
    fn jobs_spawn_jobs_and_all_run() {
        let n = AtomicUsize::new(0);
        let mut beats = 0;
        run(
            4,
            vec![0u32],
            &|depth: u32, q: &Queue<u32>| {
                n.fetch_add(1, Ordering::Relaxed);
                if depth < 10 {
                    q.push(depth + 1);
                    q.push(depth + 1);
                }
                Ok(())
            },
            &mut || {
                beats += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n.load(Ordering::Relaxed), (1 << 11) - 1);
        assert!(beats >= 1);
    }

    /// With N lanes ready, the first N jobs handed out come from N
    /// different lanes, whatever order they were queued in.
    #[test]
    fn jobs_are_handed_out_round_robin_over_lanes() {
        let mut s = State::new(64);
        for lane in 0..10u32 {
            for i in 0..200u32 {
                s.push(lane, (lane, i), false);
            }
        }
        let mut order = Vec::new();
        while let Some((lane, _)) = s.pop() {
            order.push(lane);
        }
        assert_eq!(order.len(), 2000);
        for round in order.chunks(10) {
            let mut lanes = round.to_vec();
            lanes.sort_unstable();
            lanes.dedup();
            assert_eq!(
                lanes.len(),
                10,
                "one job from each lane per round: {round:?}"
            );
        }
        // A lane that starts late gets its turn within one round.
        let mut s = State::new(64);
        for i in 0..100u32 {
            s.push(0, i, false);
        }
        s.pop();
        s.push(7, 1000, false);
        assert!((0..2).any(|_| s.pop() == Some(1000)));
    }

    /// Opening jobs come first in their lane, and wait while the budget of
    /// busy lanes is spent, except when nothing else is queued.
    #[test]
    fn opening_jobs_come_first_within_the_budget() {
        let mut s = State::new(2);
        s.push(0, "leaf", false);
        s.push(0, "open a", true);
        assert_eq!(s.pop(), Some("open a"));
        s.push(1, "leaf in a", false);
        s.push(0, "open b", true);
        // Lanes 0 and 1 hold leaves: the budget of 2 is spent, so lane 0's
        // turn hands out its leaf, not the opening job.
        assert_eq!(s.pop(), Some("leaf"));
        assert_eq!(s.pop(), Some("leaf in a"));
        assert_eq!(s.pop(), Some("open b"));
        assert_eq!(s.pop(), None);
        // Only opening jobs queued: they go, whatever the budget.
        let mut s = State::new(1);
        s.push(3, "leaf", false);
        s.push(4, "x", false);
        s.push(5, "open", true);
        assert_eq!(s.pop(), Some("leaf"));
        assert_eq!(s.pop(), Some("x"));
        assert_eq!(s.pop(), Some("open"));
        assert!(s.finished());
    }

    #[test]
    fn map_keeps_order() {
        let v: Vec<u32> = (0..1000).collect();
        assert_eq!(
            map(&v, 8, |x| x * 2),
            v.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert_eq!(map(&v[..3], 8, |x| x + 1), [1, 2, 3]);
    }

    #[test]
    fn first_error_stops_everyone() {
        let r = run(
            3,
            (0..1000).collect::<Vec<u32>>(),
            &|i: u32, _: &Queue<u32>| {
                if i == 500 {
                    Err(Error::Usage("boom".into()))
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                    Ok(())
                }
            },
            &mut || Ok(()),
        );
        assert!(matches!(r, Err(Error::Usage(m)) if m == "boom"));
    }

    #[test]
    fn heartbeat_error_stops_the_work() {
        let done = AtomicUsize::new(0);
        let r = run(
            2,
            (0..100_000).collect::<Vec<u32>>(),
            &|_: u32, _: &Queue<u32>| {
                std::thread::sleep(Duration::from_micros(100));
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            },
            &mut || Err(Error::Interrupted(15)),
        );
        assert!(matches!(r, Err(Error::Interrupted(15))));
        assert!(done.load(Ordering::Relaxed) < 100_000);
    }
}
