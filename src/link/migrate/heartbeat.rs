//! Coordination while workers run: the context a migration's coordinating
//! thread owns ([`Ctx`]), split into its part ([`Coordinator`], the lock
//! and the heartbeat it runs between the workers' results: signals, the
//! lock's lease, progress) and the narrow view workers get ([`Workers`]:
//! the lock's freshness as they see it ([`Fresh`]), progress, fidelity).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::progress::{self, Progress};
use crate::error::{Error, Result};
use crate::fs::attrs::Fidelity;
use crate::link::lock::Lock;
use crate::signals;

/// The lock's freshness as the workers see it: they make nothing new on
/// the share unless the heartbeat confirmed the lock recently, so a run
/// that was frozen past its lease (and may have lost the lock to another
/// replica) stops before it touches anything.
#[derive(Debug)]
pub(crate) struct Fresh {
    base: Instant,
    last_ok_ms: AtomicU64,
    failed: AtomicBool,
}

/// How stale the last lock confirmation may be before workers wait.
const FRESH_FOR: Duration = Duration::from_secs(3);

impl Fresh {
    pub(super) fn new() -> Fresh {
        Fresh {
            base: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    pub(super) fn touch(&self) {
        self.last_ok_ms.store(self.now_ms(), Relaxed);
    }

    /// Block until the lock was confirmed within `FRESH_FOR`.
    pub(crate) fn wait(&self) -> Result<()> {
        loop {
            if self.failed.load(Relaxed) {
                return Err(Error::LockLost(
                    "the lock could not be confirmed; stopping".into(),
                ));
            }
            if self.now_ms().saturating_sub(self.last_ok_ms.load(Relaxed))
                < FRESH_FOR.as_millis() as u64
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What one migration needs besides the config: the lock it runs under,
/// and what its workers share. The coordinating thread owns it; workers
/// get only [`Workers`] ([`Ctx::split`]).
pub(crate) struct Ctx<'a> {
    pub(crate) threads: usize,
    pub(crate) lock: &'a mut Lock,
    pub(crate) fidelity: Fidelity,
    pub(crate) progress: Progress,
    pub(crate) fresh: Fresh,
    pub(crate) app_path: PathBuf,
}

/// What workers running in parallel get of a migration's context: the
/// lock's freshness to wait on before they make anything on the share,
/// the progress counters, what the share refused, and the app directory's
/// path for messages. Never the lock itself.
#[derive(Clone, Copy)]
pub(crate) struct Workers<'a> {
    pub(crate) fresh: &'a Fresh,
    pub(crate) progress: &'a Progress,
    pub(crate) fidelity: &'a Fidelity,
    pub(crate) app_path: &'a Path,
}

/// The coordinating thread's part while workers run: the lock, kept by
/// the heartbeat.
pub(crate) struct Coordinator<'a> {
    lock: &'a mut Lock,
    fresh: &'a Fresh,
    progress: &'a Progress,
}

impl<'a> Ctx<'a> {
    /// The context of a migration of the app directory `app_path` under
    /// `lock`, the lock counted as just confirmed.
    pub(crate) fn new(
        lock: &'a mut Lock,
        threads: usize,
        label: String,
        app_path: PathBuf,
    ) -> Ctx<'a> {
        let ctx = Ctx {
            threads,
            lock,
            fidelity: Fidelity::default(),
            progress: Progress::new(label),
            fresh: Fresh::new(),
            app_path,
        };
        ctx.fresh.touch();
        ctx
    }
}

impl Ctx<'_> {
    /// Run by the coordinating thread while workers work: signals, the
    /// lock's lease, progress.
    pub(crate) fn beat(&mut self) -> Result<()> {
        self.split().0.beat()
    }

    /// The coordinator's part and the workers' view, to lend the second
    /// to workers while the first keeps the heartbeat.
    pub(crate) fn split(&mut self) -> (Coordinator<'_>, Workers<'_>) {
        (
            Coordinator {
                lock: &mut *self.lock,
                fresh: &self.fresh,
                progress: &self.progress,
            },
            Workers {
                fresh: &self.fresh,
                progress: &self.progress,
                fidelity: &self.fidelity,
                app_path: &self.app_path,
            },
        )
    }
}

impl Coordinator<'_> {
    /// The heartbeat: signals, the lock's lease, progress. A failure
    /// stops the workers at their next [`Fresh::wait`].
    pub(crate) fn beat(&mut self) -> Result<()> {
        match signals::check_interrupt().and_then(|_| self.lock.keepalive()) {
            Ok(()) => {
                self.fresh.touch();
                if let Some(snap) = self.progress.maybe_log() {
                    self.lock.publish(&progress::Published::of(&snap).to_text());
                }
                Ok(())
            }
            Err(e) => {
                self.fresh.failed.store(true, Relaxed);
                Err(e)
            }
        }
    }
}
