//! Closing written files off the threads that wrote them. On a network
//! share a close is a round trip (FUSE FLUSH and RELEASE, SMB2 CLOSE) that
//! the writer's next create need not wait for. Every close is checked: the
//! first that failed comes back from [`Closer::finish`], with the tag it
//! was given, and every file is closed once `finish` returns (a directory
//! holding a file still open cannot be removed on SMB).

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A few threads that close the files they are handed, in any order.
pub(crate) struct Closer<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    threads: Vec<JoinHandle<()>>,
}

/// A Mutex and Condvars rather than a channel: the pool already links
/// them in, and the binary has a size budget.
struct Shared<T> {
    state: Mutex<State<T>>,
    /// A file queued, or no more to come.
    ready: Condvar,
    /// Room in the queue.
    room: Condvar,
    /// A close finished.
    done: Condvar,
    queued: usize,
}

struct State<T> {
    /// Each with its ticket, in the order handed over.
    files: VecDeque<(File, T, u64)>,
    /// The next ticket.
    next: u64,
    /// Tickets queued or being closed.
    pending: BTreeSet<u64>,
    open: bool,
    failed: Option<(T, io::Error)>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A closing thread: until the queue is empty and closed.
    fn serve(&self) {
        let mut st = self.lock();
        loop {
            if let Some((f, tag, ticket)) = st.files.pop_front() {
                drop(st);
                self.room.notify_one();
                let r = close(f);
                st = self.lock();
                if let Err(e) = r {
                    st.failed.get_or_insert((tag, e));
                }
                st.pending.remove(&ticket);
                self.done.notify_all();
            } else if !st.open {
                return;
            } else {
                st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

impl<T: Send + 'static> Closer<T> {
    /// `threads` closing threads; up to `queued` files wait for one, and
    /// beyond that [`Closer::close`] waits (open files stay bounded).
    pub(crate) fn new(threads: usize, queued: usize) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                files: VecDeque::new(),
                next: 0,
                pending: BTreeSet::new(),
                open: true,
                failed: None,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            done: Condvar::new(),
            queued: queued.max(1),
        });
        let mut closer = Closer {
            shared,
            threads: Vec::new(),
        };
        for _ in 0..threads.max(1) {
            let shared = Arc::clone(&closer.shared);
            // On an error, dropping `closer` ends the threads started.
            let t = std::thread::Builder::new()
                .name("close".into())
                .spawn(move || shared.serve())?;
            closer.threads.push(t);
        }
        Ok(closer)
    }

    /// Close `f` on a closing thread; `tag` names it if that fails.
    pub(crate) fn close(&self, f: File, tag: T) {
        let sh = &self.shared;
        let mut st = sh.lock();
        while st.files.len() >= sh.queued {
            st = sh.room.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let ticket = st.next;
        st.next += 1;
        st.pending.insert(ticket);
        st.files.push_back((f, tag, ticket));
        drop(st);
        sh.ready.notify_one();
    }

    /// Wait until every file handed over before this call is closed (not
    /// those handed over meanwhile); the first close that failed, if any.
    /// What is recorded as complete must be closed, and its close checked,
    /// first: a close can carry a write that failed.
    pub(crate) fn settle(&self) -> Result<(), (T, io::Error)> {
        let sh = &self.shared;
        let mut st = sh.lock();
        let upto = st.next;
        while st.pending.first().is_some_and(|&t| t < upto) {
            st = sh.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match st.failed.take() {
            Some(failed) => Err(failed),
            None => Ok(()),
        }
    }

    /// Wait for every file handed over to be closed; the first close that
    /// failed, if any.
    pub(crate) fn finish(mut self) -> Result<(), (T, io::Error)> {
        self.join();
        match self.shared.lock().failed.take() {
            Some(failed) => Err(failed),
            None => Ok(()),
        }
    }

    fn join(&mut self) {
        self.shared.lock().open = false;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<T: Send + 'static> Drop for Closer<T> {
    /// Nothing stays open behind an early return: the files handed over
    /// are closed before it goes on.
    fn drop(&mut self) {
        self.join();
    }
}

/// `close(2)` with its error, which dropping a [`File`] throws away: on a
/// network share it can carry a write that failed after `write` returned.
pub(crate) fn close(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: `fd` came out of the File, which no longer owns it; it is
    // closed once, here.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: a plain pipe2 into our array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are fresh and owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    /// Every write end handed over is closed once `finish` returns: each
    /// read end then sees end-of-file instead of blocking.
    #[test]
    fn finish_closes_everything_handed_over() {
        let closer = Closer::new(2, 1).unwrap();
        let mut reads = Vec::new();
        for i in 0..16 {
            let (r, w) = pipe();
            closer.close(w, i);
            reads.push(r);
        }
        closer.finish().unwrap();
        for mut r in reads {
            // SAFETY: plain fcntl on our fd; a read that would block fails
            // instead of hanging the test.
            unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            let mut buf = [0u8; 1];
            assert_eq!(r.read(&mut buf).unwrap(), 0, "a write end still open");
        }
    }

    /// `settle` returns once what was handed over before it is closed.
    #[test]
    fn settle_waits_for_what_was_handed_over_before_it() {
        let closer = Closer::new(2, 4).unwrap();
        let mut reads = Vec::new();
        for i in 0..16 {
            let (r, w) = pipe();
            closer.close(w, i);
            reads.push(r);
        }
        closer.settle().unwrap();
        for mut r in reads {
            // SAFETY: plain fcntl on our fd, as above.
            unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            let mut buf = [0u8; 1];
            assert_eq!(r.read(&mut buf).unwrap(), 0, "a write end still open");
        }
        // SAFETY: a descriptor that is not open, as below.
        let bad = unsafe { File::from_raw_fd(2_000_000_000) };
        closer.close(bad, 99);
        let (tag, e) = closer.settle().unwrap_err();
        assert_eq!((tag, e.raw_os_error()), (99, Some(libc::EBADF)));
        closer.finish().unwrap();
    }

    /// A close that fails is reported with its tag.
    #[test]
    fn a_failed_close_is_reported_with_its_tag() {
        let closer = Closer::new(1, 1).unwrap();
        let (_r, w) = pipe();
        closer.close(w, 1);
        // SAFETY: deliberately a descriptor that is not open: its close
        // fails with EBADF and closes nothing of ours.
        let bad = unsafe { File::from_raw_fd(2_000_000_000) };
        closer.close(bad, 7);
        let (tag, e) = closer.finish().unwrap_err();
        assert_eq!((tag, e.raw_os_error()), (7, Some(libc::EBADF)));
    }
}
