//! The report, as text for people (problems first, then a short table)
//! and as one JSON object whose keys scripts can rely on.

use super::advice::{Advice, Level};
use super::capabilities::Supports;
use super::mount::MountEntry;
use crate::logging::json_str;

#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) share_root: String,
    pub(crate) mounted: bool,
    /// The mount `share_root` is on (its parent's when not mounted).
    pub(crate) mount: Option<MountEntry>,
    /// `None`: not measured (share unavailable or not answering).
    pub(crate) round_trip_ms: Option<f64>,
    /// Per request with this many in flight (text only).
    pub(crate) parallel_op: Option<(f64, usize)>,
    pub(crate) case_insensitive: bool,
    pub(crate) supports: Supports,
    pub(crate) free_bytes: Option<u64>,
    pub(crate) clock_skew_ms: Option<f64>,
    pub(crate) run_user: Option<RunUserReport>,
    pub(crate) links: Vec<LinkReport>,
    pub(crate) advice: Vec<Advice>,
}

#[derive(Debug, Clone)]
pub(crate) struct RunUserReport {
    pub(crate) user: String,
    pub(crate) uid: u32,
    pub(crate) writable: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct LinkReport {
    /// The app path.
    pub(crate) link: String,
    pub(crate) share: String,
    pub(crate) state: &'static str,
    /// For a link still to migrate: the baked tree and the estimate.
    pub(crate) files: Option<u64>,
    pub(crate) bytes: Option<u64>,
    /// Symlinks in the baked tree (not in `--json`: they only matter
    /// where the share cannot hold them, which the advice then says).
    pub(crate) symlinks: Option<u64>,
    pub(crate) estimated_seconds: Option<f64>,
    /// The share target's mount, when not the one `share_root` is on.
    pub(crate) other_mount: Option<OtherMount>,
}

/// A share target on a mount of its own: what can be measured there
/// without writing (doctor writes only under `share_root`'s `.sharelink`).
#[derive(Debug, Clone)]
pub(crate) struct OtherMount {
    pub(crate) entry: MountEntry,
    pub(crate) round_trip_ms: Option<f64>,
    pub(crate) free_bytes: Option<u64>,
}

/// `x` with `places` decimals, by integer arithmetic: the binary has a
/// size budget and no float formatting elsewhere.
pub(crate) fn decimal(x: f64, places: u32) -> String {
    let scale = 10u64.pow(places);
    let n = (x * scale as f64).round() as i64;
    let sign = if n < 0 { "-" } else { "" };
    let a = n.unsigned_abs();
    if places == 0 {
        return format!("{sign}{a}");
    }
    let w = places as usize;
    format!("{sign}{}.{:0w$}", a / scale, a % scale)
}

fn num(s: &mut String, v: Option<f64>) {
    match v {
        // JSON has no NaN or infinity; three decimals, trailing zeros cut.
        Some(x) if x.is_finite() => {
            let d = decimal(x, 3);
            s.push_str(d.trim_end_matches('0').trim_end_matches('.'));
        }
        _ => s.push_str("null"),
    }
}

fn int(s: &mut String, v: Option<u64>) {
    match v {
        Some(x) => s.push_str(&x.to_string()),
        None => s.push_str("null"),
    }
}

impl Report {
    #[inline(never)]
    pub(crate) fn to_json(&self) -> String {
        // By hand, as `status --json`: a flat object does not justify
        // serde_json in PID 1; pushes rather than format! calls, for size.
        let mut s = String::with_capacity(1024);
        let b = |v: bool| if v { "true" } else { "false" };
        s.push_str("{\"share_root\":");
        json_str(&mut s, &self.share_root);
        s.push_str(",\"mounted\":");
        s.push_str(b(self.mounted));
        s.push_str(",\"fs_type\":");
        match &self.mount {
            Some(m) => json_str(&mut s, &m.fs_type),
            None => s.push_str("null"),
        }
        s.push_str(",\"mount_options\":[");
        for (i, o) in self.mount.iter().flat_map(|m| &m.options).enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_str(&mut s, o);
        }
        s.push_str("],\"round_trip_ms\":");
        num(&mut s, self.round_trip_ms);
        s.push_str(",\"parallelism\":");
        match self.parallel_op {
            Some((_, n)) => s.push_str(&n.to_string()),
            None => s.push_str("null"),
        }
        s.push_str(",\"case_insensitive\":");
        s.push_str(b(self.case_insensitive));
        s.push_str(",\"supports\":{");
        for (i, (k, v)) in self.supports.named().iter().enumerate() {
            s.push_str(if i > 0 { ",\"" } else { "\"" });
            s.push_str(k);
            s.push_str("\":");
            s.push_str(b(*v));
        }
        s.push_str("},\"free_bytes\":");
        int(&mut s, self.free_bytes);
        s.push_str(",\"clock_skew_ms\":");
        num(&mut s, self.clock_skew_ms);
        s.push_str(",\"run_user\":");
        match &self.run_user {
            Some(u) => {
                s.push_str("{\"user\":");
                json_str(&mut s, &u.user);
                s.push_str(",\"uid\":");
                int(&mut s, Some(u.uid.into()));
                s.push_str(",\"writable\":");
                s.push_str(b(u.writable));
                s.push('}');
            }
            None => s.push_str("null"),
        }
        s.push_str(",\"links\":[");
        for (i, l) in self.links.iter().enumerate() {
            s.push_str(if i > 0 { ",{\"link\":" } else { "{\"link\":" });
            json_str(&mut s, &l.link);
            s.push_str(",\"state\":");
            json_str(&mut s, l.state);
            s.push_str(",\"files\":");
            int(&mut s, l.files);
            s.push_str(",\"bytes\":");
            int(&mut s, l.bytes);
            s.push_str(",\"estimated_seconds\":");
            num(&mut s, l.estimated_seconds);
            s.push('}');
        }
        s.push_str("],\"advice\":[");
        for (i, a) in self.advice.iter().enumerate() {
            s.push_str(if i > 0 { ",{\"level\":" } else { "{\"level\":" });
            json_str(&mut s, a.level.name());
            s.push_str(",\"message\":");
            json_str(&mut s, &a.message);
            s.push('}');
        }
        s.push_str("]}");
        s
    }

    /// Problems (errors, then warnings) first, then the table, then notes.
    #[inline(never)]
    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        let mut sorted: Vec<&Advice> = self.advice.iter().collect();
        sorted.sort_by_key(|a| std::cmp::Reverse(a.level));
        for a in sorted.iter().filter(|a| a.level > Level::Info) {
            s.push_str(&format!("{a}\n"));
        }
        if sorted.iter().any(|a| a.level > Level::Info) {
            s.push('\n');
        }
        self.table(&mut s);
        let notes: Vec<_> = sorted.iter().filter(|a| a.level == Level::Info).collect();
        if !notes.is_empty() {
            s.push('\n');
            for a in notes {
                s.push_str(&format!("{a}\n"));
            }
        }
        s
    }

    /// `mounted: cifs from //acct/share (rw,…)` or `NOT mounted (…)`.
    fn mount_line(&self) -> String {
        match (&self.mount, self.mounted) {
            (Some(m), true) => format!(
                "mounted: {} from {} ({})",
                m.fs_type,
                m.source,
                m.options.join(",")
            ),
            (Some(m), false) => format!(
                "NOT mounted (on {}'s {})",
                m.mount_point.display(),
                m.fs_type
            ),
            (None, _) => "NOT mounted".into(),
        }
    }

    #[inline(never)]
    fn table(&self, s: &mut String) {
        let row = |s: &mut String, k: &str, v: &str| s.push_str(&format!("{k:<12}  {v}\n"));
        let mount = self.mount_line();
        row(s, "share_root", &format!("{}  {mount}", self.share_root));
        let mut rt = ms(self.round_trip_ms);
        if let Some((par, n)) = self.parallel_op {
            rt.push_str(&format!(
                " ({} ms each with {n} in flight)",
                decimal(par, 2)
            ));
        }
        row(s, "round trip", &rt);
        row(
            s,
            "free",
            &self.free_bytes.map_or("unknown".into(), human_bytes),
        );
        row(
            s,
            "clock skew",
            &self.clock_skew_ms.map_or("unknown".into(), |x| {
                format!("{}{} ms", if x >= 0.0 { "+" } else { "" }, decimal(x, 0))
            }),
        );
        if self.round_trip_ms.is_some() {
            let mut keeps = String::new();
            for (k, v) in self.supports.named() {
                keeps.push_str(if keeps.is_empty() { "" } else { ", " });
                keeps.push_str(k);
                keeps.push_str(if v { " yes" } else { " NO" });
            }
            row(s, "keeps", &keeps);
            row(
                s,
                "names",
                if self.case_insensitive {
                    "case-INSENSITIVE"
                } else {
                    "case-sensitive"
                },
            );
        }
        if let Some(u) = &self.run_user {
            let w = if u.writable {
                "can write every share target"
            } else {
                "CANNOT write (see above)"
            };
            row(s, "run user", &format!("{} (uid {}): {w}", u.user, u.uid));
        }
        for l in &self.links {
            let mut v = format!("{} -> {}  {}", l.link, l.share, l.state);
            if let (Some(f), Some(b)) = (l.files, l.bytes) {
                v.push_str(&format!(", {f} files, {}", human_bytes(b)));
            }
            if let Some(e) = l.estimated_seconds {
                v.push_str(&format!(", first start about {} s", decimal(e, 1)));
            }
            if let Some(o) = &l.other_mount {
                v.push_str(" [own mount: ");
                v.push_str(&o.entry.fs_type);
                v.push_str(" from ");
                v.push_str(&o.entry.source);
                v.push_str(" (");
                v.push_str(&o.entry.options.join(","));
                v.push_str("), round trip ");
                v.push_str(&ms(o.round_trip_ms));
                v.push_str(", free ");
                v.push_str(&o.free_bytes.map_or("unknown".into(), human_bytes));
                v.push(']');
            }
            row(s, "link", &v);
        }
    }
}

/// `2.2 ms`, or `no answer`.
fn ms(v: Option<f64>) -> String {
    v.map_or("no answer".to_string(), |x| format!("{} ms", decimal(x, 1)))
}

fn human_bytes(b: u64) -> String {
    crate::link::migrate::progress::human(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_exactly_the_documented_keys() {
        let r = Report {
            share_root: "/mnt/\"share\"".into(),
            mounted: false,
            mount: None,
            round_trip_ms: None,
            parallel_op: None,
            case_insensitive: false,
            supports: Supports::default(),
            free_bytes: None,
            clock_skew_ms: Some(f64::NAN),
            run_user: Some(RunUserReport {
                user: "app".into(),
                uid: 10,
                writable: false,
            }),
            links: vec![LinkReport {
                link: "/app/x".into(),
                share: "/mnt/x".into(),
                state: "needs-migration",
                files: Some(3),
                bytes: Some(7),
                symlinks: Some(0),
                estimated_seconds: Some(1.23456),
                other_mount: None,
            }],
            advice: vec![Advice::new(Level::Error, "a \"b\"\n")],
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "share_root",
            "mounted",
            "fs_type",
            "mount_options",
            "round_trip_ms",
            "parallelism",
            "case_insensitive",
            "supports",
            "free_bytes",
            "clock_skew_ms",
            "run_user",
            "links",
            "advice",
        ];
        let mut got = keys.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(v["supports"].as_object().unwrap().len(), 7);
        assert!(v["clock_skew_ms"].is_null() && v["fs_type"].is_null());
        assert_eq!(v["links"][0]["estimated_seconds"], 1.235);
        assert_eq!(v["run_user"]["writable"], false);
        assert_eq!(v["advice"][0]["message"], "a \"b\"\n");
        assert_eq!(v["share_root"], "/mnt/\"share\"");
        assert!(r.to_text().starts_with("error"));
        assert_eq!(
            [decimal(-3.1125, 3), decimal(0.05, 1), decimal(2.0, 0)],
            ["-3.113", "0.1", "2"]
        );
    }
}
