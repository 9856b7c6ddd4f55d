//! A small pool for filesystem work: jobs may add jobs (a directory job
//! adds its children), the most recent first, so the walk stays depth-first
//! and the directories held open stay few. The calling thread does not run
//! jobs: it keeps the heartbeat (lock lease, progress, signals) going at a
//! fixed pace however long one job takes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

pub struct Queue<J> {
    state: Mutex<State<J>>,
    wake: Condvar,
    /// Set on the first error or when the heartbeat says stop; long jobs
    /// check it between chunks.
    pub stop: AtomicBool,
}

struct State<J> {
    jobs: Vec<J>,
    running: usize,
    error: Option<Error>,
}

impl<J> Queue<J> {
    pub fn push(&self, job: J) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.jobs.push(job);
        drop(s);
        self.wake.notify_one();
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn fail(&self, e: Error) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The first error is the one to report; later ones are its echoes
        // (ECANCELED from jobs told to stop).
        s.error.get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
        drop(s);
        self.wake.notify_all();
    }
}

/// How often the heartbeat runs while jobs are in flight.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// Run `initial` and every job they push on `threads` worker threads.
/// `heartbeat` runs on the calling thread every [`HEARTBEAT`] and once at
/// the end; an error from it stops the work. Returns the first error.
pub fn run<J, F>(
    threads: usize,
    initial: Vec<J>,
    work: F,
    heartbeat: &mut dyn FnMut() -> Result<()>,
) -> Result<()>
where
    J: Send,
    F: Fn(J, &Queue<J>) -> Result<()> + Sync,
{
    let q = Queue {
        state: Mutex::new(State {
            jobs: initial,
            running: 0,
            error: None,
        }),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
    };
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| worker(&q, &work));
        }
        let mut s = q.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = std::time::Instant::now();
        loop {
            let idle = s.jobs.is_empty() && s.running == 0;
            if idle || (q.stopped() && s.running == 0) {
                break;
            }
            s = q
                .wake
                .wait_timeout(s, HEARTBEAT)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if last.elapsed() >= HEARTBEAT && !q.stopped() {
                drop(s);
                last = std::time::Instant::now();
                if let Err(e) = heartbeat() {
                    q.fail(e);
                }
                s = q.state.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
        // Release the workers waiting for jobs that will not come.
        q.stop.store(true, Ordering::Relaxed);
        drop(s);
        q.wake.notify_all();
    });
    let s = q.state.into_inner().unwrap_or_else(|p| p.into_inner());
    match s.error {
        Some(e) => Err(e),
        None => heartbeat(),
    }
}

fn worker<J, F>(q: &Queue<J>, work: &F)
where
    F: Fn(J, &Queue<J>) -> Result<()>,
{
    loop {
        let mut s = q.state.lock().unwrap_or_else(|p| p.into_inner());
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
                q.wake.notify_all();
                return;
            }
            s = q.wake.wait(s).unwrap_or_else(|p| p.into_inner());
        };
        s.running += 1;
        drop(s);
        let r = work(job, q);
        let mut s = q.state.lock().unwrap_or_else(|p| p.into_inner());
        s.running -= 1;
        let finished = s.running == 0 && s.jobs.is_empty();
        drop(s);
        match r {
            // The last job wakes everyone: the caller and the idle workers
            // all have nothing left to wait for.
            Ok(()) if finished => q.wake.notify_all(),
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
            |depth, q| {
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
    fn first_error_stops_everyone() {
        let r = run(
            3,
            (0..1000).collect::<Vec<u32>>(),
            |i, _| {
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
            |_, _| {
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
