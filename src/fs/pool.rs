//! A small pool for filesystem work: jobs may add jobs (a directory job
//! adds its children), the most recent first, so the walk stays depth-first
//! and the directories held open stay few. The calling thread does not run
//! jobs: it keeps the heartbeat (lock lease, progress, signals) going at a
//! fixed pace however long one job takes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

pub struct Queue<J> {
    state: Mutex<State<J>>,
    /// Wakes a worker: a job was pushed, or the work is over.
    work: Condvar,
    /// Wakes the calling thread: the work is over.
    done: Condvar,
    threads: usize,
    /// Set on the first error or when the heartbeat says stop; long jobs
    /// check it between chunks.
    pub stop: AtomicBool,
}

struct State<J> {
    jobs: Vec<J>,
    running: usize,
    /// Workers waiting for a job: a wake-up is a system call, made only
    /// when someone waits.
    idle: usize,
    error: Option<Error>,
}

impl<J> State<J> {
    fn finished(&self) -> bool {
        self.running == 0 && self.jobs.is_empty()
    }
}

impl<J> Queue<J> {
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, job: J) {
        let mut s = self.lock();
        s.jobs.push(job);
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.work.notify_one();
        }
    }

    /// Workers in the pool (to size the jobs they are given).
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn stopped(&self) -> bool {
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
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// Run `initial` and every job they push on `threads` worker threads.
/// `heartbeat` runs on the calling thread every [`HEARTBEAT`] and once at
/// the end; an error from it stops the work. Returns the first error.
pub fn run<J: Send>(
    threads: usize,
    initial: Vec<J>,
    work: &(dyn Fn(J, &Queue<J>) -> Result<()> + Sync),
    heartbeat: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let q = Queue {
        state: Mutex::new(State {
            jobs: initial,
            running: 0,
            idle: 0,
            error: None,
        }),
        work: Condvar::new(),
        done: Condvar::new(),
        threads: threads.max(1),
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

/// `f` over `items` on up to `threads` threads, results in order. A few
/// items are done on the calling thread: starting threads costs more.
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.min(items.len() / 4).max(1);
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(f(item));
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every item mapped")
        })
        .collect()
}

fn worker<J>(q: &Queue<J>, work: &dyn Fn(J, &Queue<J>) -> Result<()>) {
    loop {
        let mut s = q.lock();
        let job = loop {
            if q.stopped() {
                return;
            }
            if let Some(j) = s.jobs.pop() {
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
