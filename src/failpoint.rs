//! Named crash points for the fault-injection tests.
//!
//! With the `failpoints` feature, `SHARELINK_FAILPOINT=<name>` makes the
//! process die by SIGKILL the first time it reaches [`hit`]`("<name>")`
//! (`<name>:<n>` on the n-th time), leaving the disk exactly as a crash at
//! that instant would. `<name>:<n>:stop` stops it (SIGSTOP) instead, so a
//! test can change the world mid-run (fill the share) and let it go on.
//! Several, separated by commas, each count on their own
//! (`replace.checked:1:stop,replace.aside:1`: stopped at the first, killed
//! at the second once continued).
//! `SHARELINK_FAILPOINT_LOG=<file>` appends the name of every failpoint
//! reached to that file, so a test can count them in a run that is not
//! stopped.
//! Without the feature [`hit`] compiles to nothing.
//!
//! The points are the variants of [`Failpoint`], listed once in
//! [`Failpoint::ALL`]; a test checks that every one is hit somewhere in
//! `src/` and that docs/design.md names exactly these.

/// A named crash point. The name (`Failpoint::name`) is what
/// `SHARELINK_FAILPOINT` and the log use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failpoint {
    /// The link's lock was just taken.
    LockAcquired,
    /// A staging directory was just made.
    StagingCreated,
    /// A file was just copied into the staging tree.
    StagingFile,
    /// A batch of complete files was just written to the journal.
    StagingJournal,
    /// The staging tree was just synced.
    StagingSynced,
    /// The whole staged tree was just renamed into the share target.
    CommitRenamed,
    /// The app-side marker was just written.
    CommitMarked,
    /// The share was just synced after the commit.
    CommitSynced,
    /// A replace checked the share's entry and has not moved it aside yet.
    ReplaceChecked,
    /// A replace just moved the share's entry aside (its path recorded
    /// beside it), before checking it there.
    ReplaceAside,
    /// A staged root was just moved into the share target.
    MergeMoved,
    /// A set-aside copy was just renamed to its stamp.
    DisplaceRenamed,
    /// `image-wins`: the share's versions were just kept, synced.
    SupersedeKept,
    /// `image-wins`: a share entry was just replaced.
    SupersedeReplaced,
    /// A lease was just taken on an app file about to be deleted.
    PruneLeased,
    /// An app file's last name was just unlinked, its lease still held.
    PruneUnlinked,
    /// An app entry was just deleted.
    PruneEntry,
    /// A pass just finished deleting.
    PruneDone,
    /// `keep` just removed an old set-aside copy.
    KeepRemoved,
    /// The temporary symlink was just made, before it replaces the app directory.
    SwapTemp,
}

impl Failpoint {
    /// Every failpoint, in the order a migration reaches them; the
    /// fault-injection tests sweep these.
    pub(crate) const ALL: [Failpoint; 20] = [
        Failpoint::LockAcquired,
        Failpoint::StagingCreated,
        Failpoint::StagingFile,
        Failpoint::StagingJournal,
        Failpoint::StagingSynced,
        Failpoint::CommitRenamed,
        Failpoint::CommitMarked,
        Failpoint::CommitSynced,
        Failpoint::ReplaceChecked,
        Failpoint::ReplaceAside,
        Failpoint::MergeMoved,
        Failpoint::DisplaceRenamed,
        Failpoint::SupersedeKept,
        Failpoint::SupersedeReplaced,
        Failpoint::PruneLeased,
        Failpoint::PruneUnlinked,
        Failpoint::PruneEntry,
        Failpoint::PruneDone,
        Failpoint::KeepRemoved,
        Failpoint::SwapTemp,
    ];

    /// The name `SHARELINK_FAILPOINT` takes.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Failpoint::LockAcquired => "lock.acquired",
            Failpoint::StagingCreated => "staging.created",
            Failpoint::StagingFile => "staging.file",
            Failpoint::StagingJournal => "staging.journal",
            Failpoint::StagingSynced => "staging.synced",
            Failpoint::CommitRenamed => "commit.renamed",
            Failpoint::CommitMarked => "commit.marked",
            Failpoint::CommitSynced => "commit.synced",
            Failpoint::ReplaceChecked => "replace.checked",
            Failpoint::ReplaceAside => "replace.aside",
            Failpoint::MergeMoved => "merge.moved",
            Failpoint::DisplaceRenamed => "displace.renamed",
            Failpoint::SupersedeKept => "supersede.kept",
            Failpoint::SupersedeReplaced => "supersede.replaced",
            Failpoint::PruneLeased => "prune.leased",
            Failpoint::PruneUnlinked => "prune.unlinked",
            Failpoint::PruneEntry => "prune.entry",
            Failpoint::PruneDone => "prune.done",
            Failpoint::KeepRemoved => "keep.removed",
            Failpoint::SwapTemp => "swap.temp",
        }
    }
}

/// The names of [`Failpoint::ALL`], in its order.
pub const NAMES: [&str; Failpoint::ALL.len()] = {
    let mut names = [""; Failpoint::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Failpoint::ALL[i].name();
        i += 1;
    }
    names
};

#[cfg(feature = "failpoints")]
pub(crate) fn hit(point: Failpoint) {
    let name = point.name();
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    type Spec = (String, u64, bool, AtomicU64);
    static PARSED: OnceLock<Vec<Spec>> = OnceLock::new();
    let specs = PARSED.get_or_init(|| {
        let v = std::env::var("SHARELINK_FAILPOINT").unwrap_or_default();
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let mut parts = s.splitn(3, ':');
                let n = parts.next().unwrap_or_default().to_string();
                let k = parts.next().and_then(|k| k.parse().ok()).unwrap_or(1);
                (n, k, parts.next() == Some("stop"), AtomicU64::new(0))
            })
            .collect()
    });
    static LOG: OnceLock<Option<std::fs::File>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let p = std::env::var_os("SHARELINK_FAILPOINT_LOG")?;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .ok()
    });
    if let Some(mut f) = log.as_ref() {
        use std::io::Write;
        let _ = f.write_all(format!("{name}\n").as_bytes());
    }
    for (target, nth, stop, count) in specs {
        if target == name && count.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            if *stop {
                eprintln!("sharelink: failpoint {name} hit, stopping self");
                // To this very thread (tgkill, not kill): it takes the
                // signal on its way out of the call and stops the whole
                // process at once. A process-directed SIGSTOP goes to a
                // thread the kernel picks (often the main one, asleep),
                // and until that thread is scheduled (milliseconds on a
                // loaded machine) the other threads run on: workers could
                // do all their remaining work "after" the stop.
                // SAFETY: plain syscalls.
                unsafe {
                    libc::syscall(
                        libc::SYS_tgkill,
                        libc::getpid(),
                        libc::syscall(libc::SYS_gettid),
                        libc::SIGSTOP,
                    )
                };
                return;
            }
            eprintln!("sharelink: failpoint {name} hit, killing self");
            // SAFETY: plain syscalls; _exit if SIGKILL is ignored (PID 1).
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
                libc::_exit(137);
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_point: Failpoint) {}

/// Whether this binary honours `SHARELINK_FAILPOINT`.
pub const ENABLED: bool = cfg!(feature = "failpoints");

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The variants named in `hit(Failpoint::…)` calls in `dir`'s files.
    fn hit_sites(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                hit_sites(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("failpoint.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("hit(Failpoint::") {
                    let rest = &text[i + "hit(Failpoint::".len()..];
                    let end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap();
                    out.insert(rest[..end].to_string());
                }
            }
        }
    }

    #[test]
    fn every_failpoint_is_hit_somewhere_and_only_those() {
        let mut sites = BTreeSet::new();
        hit_sites(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut sites,
        );
        let listed: BTreeSet<String> = Failpoint::ALL.iter().map(|f| format!("{f:?}")).collect();
        assert_eq!(sites, listed);
        let names: BTreeSet<&str> = NAMES.iter().copied().collect();
        assert_eq!(names.len(), NAMES.len(), "failpoint names are unique");
    }

    #[test]
    fn design_names_the_failpoints_in_order() {
        let doc = include_str!("../docs/design.md");
        let start = doc
            .find("### Failpoints")
            .expect("design.md has a Failpoints section");
        let section = &doc[start..];
        let from = section
            .find("The points, in the order")
            .expect("the list of points");
        let to = section.find("Release builds").expect("the end of the list");
        let named: Vec<&str> = section[from..to]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.contains(' '))
            .collect();
        assert_eq!(named, NAMES);
    }
}
