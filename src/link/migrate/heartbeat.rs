//! Coordination while workers run: the lock's freshness as workers see
//! it ([`Fresh`]), the context a migration lends its workers ([`Ctx`]), and
//! the heartbeat the coordinating thread runs between their results
//! (signals, the lock's lease, progress).

use std::path::PathBuf;
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
pub struct Fresh {
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
    pub fn wait(&self) -> Result<()> {
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
/// and what its workers share.
pub struct Ctx<'a> {
    pub threads: usize,
    pub lock: &'a mut Lock,
    pub fidelity: Fidelity,
    pub progress: Progress,
    pub fresh: Fresh,
    pub app_path: PathBuf,
}

impl Ctx<'_> {
    /// Run by the coordinating thread while workers work: signals, the
    /// lock's lease, progress.
    pub fn beat(&mut self) -> Result<()> {
        heartbeat(self.lock, &self.fresh, &self.progress)
    }
}

/// [`Ctx::beat`], for callers that lent the rest of the context to workers.
pub fn heartbeat(lock: &mut Lock, fresh: &Fresh, progress: &Progress) -> Result<()> {
    match signals::check_interrupt().and_then(|_| lock.keepalive()) {
        Ok(()) => {
            fresh.touch();
            if let Some(snap) = progress.maybe_log() {
                lock.publish(&progress::Published::of(&snap).to_text());
            }
            Ok(())
        }
        Err(e) => {
            fresh.failed.store(true, Relaxed);
            Err(e)
        }
    }
}
