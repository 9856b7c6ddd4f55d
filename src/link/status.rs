//! `status`: each link's state, from the plan, with what a migration in
//! progress (another process's) or an interrupted one has done. Never
//! writes, never waits for the mount.

use crate::config::{Config, Link, MigrateMode};
use crate::link::migrate::progress;
use crate::link::plan::{decide, observe_all, Decision, Observed, Paths, State};
use crate::link::{lock, mounts};

/// `status`: one entry per link.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) healthy: bool,
    pub(crate) share_root: String,
    pub(crate) share_available: bool,
    pub(crate) share_problem: Option<String>,
    pub(crate) links: Vec<LinkReport>,
}

#[derive(Debug)]
pub(crate) struct LinkReport {
    pub(crate) app: String,
    pub(crate) share: String,
    pub(crate) state: State,
    pub(crate) detail: Option<String>,
}

/// The status report.
pub(crate) fn status(cfg: &Config) -> Report {
    let share_problem = mounts::check_share(cfg, false).err().map(|e| e.to_string());
    let observed = if share_problem.is_some() {
        Vec::new()
    } else {
        observe_all(cfg)
    };
    let links: Vec<LinkReport> = cfg
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let paths = Paths::new(cfg, l);
            let (state, detail) = match (&share_problem, &observed.get(i)) {
                (Some(_), _) | (None, None) => (State::ShareUnavailable, None),
                (None, Some(Err(e))) => (State::Blocked, Some(e.to_string())),
                (None, Some(Ok(o))) => link_state(cfg, l, &decide(l, &paths, o), o),
            };
            LinkReport {
                app: paths.app.display().to_string(),
                share: paths.share.display().to_string(),
                state,
                detail,
            }
        })
        .collect();
    Report {
        healthy: share_problem.is_none() && links.iter().all(|l| l.state == State::Linked),
        share_root: cfg.share_root.display().to_string(),
        share_available: share_problem.is_none(),
        share_problem,
        links,
    }
}

/// What a pending migration will do to the share's data, when that is
/// more than the default (`if-empty` never replaces anything).
fn policy(l: &Link, d: &Decision) -> Option<String> {
    use crate::link::plan::{Action, MigrationPlan};
    let Decision::Proceed { actions, .. } = d else {
        return None;
    };
    let compares = actions
        .iter()
        .any(|a| matches!(a, Action::Migrate(MigrationPlan::Compare(_))));
    if !compares || l.migrate != MigrateMode::ImageWins {
        return None;
    }
    Some(format!(
        "migrate = \"image-wins\": the image's files replace the share's where they differ, the share's versions set aside{}",
        match l.keep {
            Some(k) => format!(" (keep = {k})"),
            None => String::new(),
        }
    ))
}

/// A directory where the link belongs, and a share target that already
/// holds data: `link` compares them and sets aside what differs. Said
/// before it happens, because the directory may be the pipeline's own
/// (it replaced the symlink and wrote there), not baked data.
fn set_aside_note(cfg: &Config, d: &Decision) -> Option<String> {
    use crate::link::plan::{Action, MigrationPlan};
    let Decision::Proceed { actions, .. } = d else {
        return None;
    };
    actions
        .iter()
        .any(|a| matches!(a, Action::Migrate(MigrationPlan::Compare(_))))
        .then(|| {
            format!(
                "a directory, and the share target already holds data: `sharelink link` keeps the share's \
                 version and sets aside app entries that differ (with migrate = \"if-empty\", also those \
                 it lacks) under {}/{}/displaced/. If the pipeline replaced the symlink with this \
                 directory, its new files are among them",
                cfg.share_root.display(),
                crate::config::RESERVED_DIR
            )
        })
}

/// A link's state and what to say about it. A migration still to do may be
/// under way in another process (its lock is held): then it is
/// `migrating`, with that process's progress.
fn link_state(cfg: &Config, l: &Link, d: &Decision, o: &Observed) -> (State, Option<String>) {
    match d {
        Decision::Blocked(why) => (State::Blocked, Some(why.clone())),
        Decision::Proceed { state, .. } => match state {
            State::NeedsMigration | State::Interrupted => {
                match lock::holder(&cfg.share_root, &l.share) {
                    Some(h) => (State::Migrating, Some(describe_holder(&h))),
                    None if o.leftovers.any() => (*state, Some(o.leftovers.describe())),
                    None => {
                        let notes: Vec<String> = [policy(l, d), set_aside_note(cfg, d)]
                            .into_iter()
                            .flatten()
                            .collect();
                        (*state, (!notes.is_empty()).then(|| notes.join("; ")))
                    }
                }
            }
            _ => (*state, None),
        },
    }
}

/// `by host pid 7: 120/5000 files, 1.2 GiB/4.0 GiB, 85.0 MiB/s, about 34s left`
fn describe_holder(h: &lock::Holder) -> String {
    match h.progress.as_deref().and_then(progress::Published::parse) {
        Some(p) => format!("by {}: {}", h.who, p.describe()),
        None => format!("by {}", h.who),
    }
}

impl Report {
    pub(crate) fn healthy(&self) -> bool {
        self.healthy
    }

    pub(crate) fn to_json(&self) -> String {
        // By hand: two flat objects do not justify serde_json in PID 1.
        use crate::logging::json_str;
        let mut s = String::with_capacity(128 + 160 * self.links.len());
        s.push_str(&format!("{{\"healthy\":{},\"share_root\":", self.healthy));
        json_str(&mut s, &self.share_root);
        s.push_str(&format!(",\"share_available\":{}", self.share_available));
        if let Some(p) = &self.share_problem {
            s.push_str(",\"share_problem\":");
            json_str(&mut s, p);
        }
        s.push_str(",\"links\":[");
        for (i, l) in self.links.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"app\":");
            json_str(&mut s, &l.app);
            s.push_str(",\"share\":");
            json_str(&mut s, &l.share);
            s.push_str(",\"state\":");
            json_str(&mut s, l.state.name());
            if let Some(d) = &l.detail {
                s.push_str(",\"detail\":");
                json_str(&mut s, d);
            }
            s.push('}');
        }
        s.push_str("]}");
        s
    }

    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(p) = &self.share_problem {
            s.push_str(&format!("share-unavailable  {p}\n"));
        }
        let width = self
            .links
            .iter()
            .map(|l| l.state.name().len())
            .max()
            .unwrap_or(0);
        for l in &self.links {
            s.push_str(&format!(
                "{:width$}  {} -> {}",
                l.state.name(),
                l.app,
                l.share
            ));
            if let Some(d) = &l.detail {
                s.push_str(&format!("  ({d})"));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_valid_and_escaped() {
        let r = Report {
            healthy: false,
            share_root: "/s".into(),
            share_available: true,
            share_problem: None,
            links: vec![LinkReport {
                app: "/app/we\"ird\nname".into(),
                share: "/s/x".into(),
                state: State::Blocked,
                detail: Some("a \\ b".into()),
            }],
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["healthy"], false);
        assert_eq!(v["links"][0]["app"], "/app/we\"ird\nname");
        assert_eq!(v["links"][0]["state"], "blocked");
        assert_eq!(v["links"][0]["detail"], "a \\ b");
        assert!(v.get("share_problem").is_none());
    }
}
