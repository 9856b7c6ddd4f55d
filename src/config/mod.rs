//! The TOML config: schema, defaults, command-line overrides and validation.
//!
//! Everything here is pure (text in, [`Config`] or [`Error::Config`] out)
//! except [`load`], which reads the file. Every rejection names the key and,
//! where the parser knows it, the line, and maps to exit 78.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod raw;

use crate::error::{Error, Result};
use crate::signals::{self, Rewrites};
use raw::{keep, RawConfig, RawDisplaced, RawLink, RawMigration, RawRun, RawSignal};

pub(crate) const DEFAULT_PATH: &str = "/etc/sharelink/sharelink.toml";
/// Reserved directory in the share for locks, displaced files and the like.
pub(crate) const RESERVED_DIR: &str = ".sharelink";

/// A validated config with overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from (for messages).
    pub(crate) origin: PathBuf,
    pub app_root: PathBuf,
    pub share_root: PathBuf,
    pub(crate) require_mount: bool,
    /// Accept a Docker volume on the local disk as the share.
    pub(crate) allow_local_volume: bool,
    pub(crate) mount_timeout: Duration,
    /// In file order.
    pub links: Vec<Link>,
    pub(crate) run: RunDefaults,
    pub(crate) migration: MigrationSettings,
}

/// One `[links]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Relative to `app_root`, normalised.
    pub app: PathBuf,
    /// Relative to `share_root`, normalised.
    pub share: PathBuf,
    /// Relative to the share target.
    pub dirs: Vec<PathBuf>,
    pub(crate) migrate: MigrateMode,
    /// How long set-aside copies under `displaced/` are kept: the link's
    /// own `keep`, else `[displaced] keep`; `None` keeps them all.
    pub(crate) keep: Option<Keep>,
    /// 1-based line of the entry in the config, when known.
    pub(crate) line: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MigrateMode {
    /// The share wins when it already holds data; app-only files are
    /// displaced to `.sharelink/displaced/`.
    IfEmpty,
    /// App-only files are copied into a non-empty share, never overwriting.
    Merge,
    /// The image owns the data: app-only files are copied in, and an app
    /// file that differs from the share's replaces it, the share's version
    /// set aside first.
    ImageWins,
}

/// How many set-aside copies (`displaced/<share path>/<stamp>/`) a link
/// keeps after a successful migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// The most recent N stamps (at least 1).
    Count(u32),
    /// Stamps younger than this.
    Age(Duration),
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // As written in the config: `5`, `30d`.
            Keep::Count(n) => write!(f, "{n}"),
            Keep::Age(d) if d.as_secs() % 86400 == 0 => write!(f, "{}d", d.as_secs() / 86400),
            Keep::Age(d) if d.as_secs() % 3600 == 0 => write!(f, "{}h", d.as_secs() / 3600),
            Keep::Age(d) if d.as_secs() % 60 == 0 => write!(f, "{}m", d.as_secs() / 60),
            Keep::Age(d) if d.subsec_nanos() == 0 => write!(f, "{}s", d.as_secs()),
            Keep::Age(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

impl fmt::Display for MigrateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrateMode::IfEmpty => "if-empty",
            MigrateMode::Merge => "merge",
            MigrateMode::ImageWins => "image-wins",
        })
    }
}

/// `[run]`: defaults for `sharelink run`; command-line flags win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunDefaults {
    pub(crate) user: Option<String>,
    pub(crate) grace_period: Duration,
    pub(crate) kill_process_group: bool,
    /// `rewrite = { TERM = "INT-if-uncaught" }`: signals forwarded as
    /// another one.
    pub(crate) rewrite: Rewrites,
}

impl Default for RunDefaults {
    fn default() -> Self {
        RunDefaults {
            user: None,
            grace_period: Duration::from_secs(3),
            kill_process_group: false,
            rewrite: Rewrites::default(),
        }
    }
}

/// `[migration]`: how baked data is moved into the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MigrationSettings {
    /// Copies and comparisons in flight at once; `None`: chosen from the
    /// share's filesystem type ([`MigrationSettings::threads`]).
    pub(crate) parallelism: Option<usize>,
}

/// Bounds of `parallelism`.
pub(crate) const MAX_PARALLELISM: usize = 256;

/// Workers on a network share. A copied file is about eight round trips,
/// three of them a create under its directory's lock: fewer workers leave
/// directories of a wide tree without a create in flight.
pub(crate) const NETWORK_PARALLELISM: usize = 64;

impl MigrationSettings {
    /// Workers for a migration into `share_root`. On a network share each
    /// operation waits for a round trip, so many are kept in flight; on a
    /// local disk the work is CPU- and syscall-bound, so one per CPU.
    pub(crate) fn threads(&self, share_root: &Path) -> usize {
        if let Some(n) = self.parallelism {
            return n;
        }
        if is_network_fs(share_root) {
            NETWORK_PARALLELISM
        } else {
            cpus().clamp(2, 8)
        }
    }
}

/// The CPUs this process may run on (not std's available_parallelism,
/// whose cgroup parsing costs binary size; a CPU quota only slows a copy).
fn cpus() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// Whether `path` is on a filesystem reached over a network (or through
/// FUSE, which may be one).
pub(crate) fn is_network_fs(path: &Path) -> bool {
    const NETWORK: [u64; 9] = [
        0xFF534D42, // CIFS
        0xFE534D42, // SMB2
        0x517B,     // SMB
        0x6969,     // NFS
        0x65735546, // FUSE
        0x01021997, // 9P
        0x00C36400, // Ceph
        0x0BD00BD0, // Lustre
        0x47504653, // GPFS
    ];
    // Asked once per filesystem (by device number) and process: a statfs
    // is a round trip on a network share, and the type of a mounted
    // filesystem does not change.
    use std::os::unix::fs::MetadataExt;
    static SEEN: std::sync::Mutex<Vec<(u64, bool)>> = std::sync::Mutex::new(Vec::new());
    let dev = std::fs::metadata(path).map(|m| m.dev()).ok();
    if let Some(dev) = dev {
        let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(_, net)) = seen.iter().find(|(d, _)| *d == dev) {
            return net;
        }
    }
    let net = nix::sys::statfs::statfs(path)
        .map(|s| NETWORK.contains(&(s.filesystem_type().0 as u64)))
        .unwrap_or(false);
    if let Some(dev) = dev {
        SEEN.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((dev, net));
    }
    net
}

/// Command-line / environment values that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub app_root: Option<PathBuf>,
    pub share_root: Option<PathBuf>,
    pub require_mount: Option<bool>,
    pub parallelism: Option<usize>,
}

impl Config {
    pub(crate) fn app_path(&self, link: &Link) -> PathBuf {
        self.app_root.join(&link.app)
    }
    pub(crate) fn share_path(&self, link: &Link) -> PathBuf {
        self.share_root.join(&link.share)
    }
}

// ---- loading ----------------------------------------------------------------

/// Where the config is: `--config`, else `$SHARELINK_CONFIG`, else the default.
pub(crate) fn locate(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("SHARELINK_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Read, parse and validate the config at `path`.
pub(crate) fn load(path: &Path, ov: &Overrides) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (set --config or SHARELINK_CONFIG)"
        } else {
            ""
        };
        Error::Config(format!("cannot read config {}: {e}{hint}", path.display()))
    })?;
    parse(&text, path, ov)
}

/// Parse and validate config text. `origin` only labels messages.
pub fn parse(text: &str, origin: &Path, ov: &Overrides) -> Result<Config> {
    let src = Source::new(text, origin);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        Error::Config(format!(
            "config {}: {}",
            origin.display(),
            e.to_string().trim_end()
        ))
    })?;
    let app_root = root(
        "app_root",
        ov.app_root.as_deref(),
        raw.app_root.as_ref(),
        &src,
    )?;
    let share_root = root(
        "share_root",
        ov.share_root.as_deref(),
        raw.share_root.as_ref(),
        &src,
    )?;
    let mount_timeout = match &raw.mount_timeout {
        Some(s) => {
            parse_duration(s.get_ref()).map_err(|m| src.at(s.span()).err("mount_timeout", &m))?
        }
        None => Duration::ZERO,
    };
    let cfg = Config {
        origin: origin.to_path_buf(),
        app_root,
        share_root,
        require_mount: ov.require_mount.or(raw.require_mount).unwrap_or(true),
        allow_local_volume: raw.allow_local_volume.unwrap_or(false),
        mount_timeout,
        links: links(&raw.links, &src, displaced_keep(&raw.displaced, &src)?)?,
        run: run_defaults(&raw.run, &src)?,
        migration: MigrationSettings {
            parallelism: parallelism(ov, &raw.migration, &src)?,
        },
    };
    check_overlaps(&cfg)?;
    check_lengths(&cfg)?;
    Ok(cfg)
}

/// The config text, to say where in it a value is.
struct Source<'a> {
    text: &'a str,
    origin: &'a Path,
    /// Offsets of line starts, so each span's line is a binary search
    /// (counting newlines per link made a 1,000-link config quadratic).
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, origin: &'a Path) -> Source<'a> {
        Source {
            text,
            origin,
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        }
    }

    fn at(&self, span: std::ops::Range<usize>) -> Where<'a> {
        Where {
            origin: self.origin,
            line: Some(self.line_starts.partition_point(|&s| s <= span.start)),
        }
    }

    /// No place in the file (a command-line value).
    fn nowhere(&self) -> Where<'a> {
        Where {
            origin: self.origin,
            line: None,
        }
    }
}

fn run_defaults(raw: &RawRun, src: &Source<'_>) -> Result<RunDefaults> {
    let grace_period = match &raw.grace_period {
        Some(s) => {
            parse_duration(s.get_ref()).map_err(|m| src.at(s.span()).err("run.grace_period", &m))?
        }
        None => RunDefaults::default().grace_period,
    };
    let user = match &raw.user {
        Some(u) if u.get_ref().trim().is_empty() => {
            return Err(src.at(u.span()).err("run.user", "must not be empty"))
        }
        Some(u) => Some(u.get_ref().clone()),
        None => None,
    };
    let mut rewrite = Rewrites::default();
    for (from, to) in raw.rewrite.iter().flatten() {
        let key = format!("run.rewrite.{}", from.get_ref());
        let source =
            signals::parse_source(from.get_ref()).map_err(|m| src.at(from.span()).err(&key, &m))?;
        let target = match to.get_ref() {
            RawSignal::Name(n) => signals::parse_target(n),
            RawSignal::Number(n) => signals::parse_target(&n.to_string()),
        }
        .map_err(|m| src.at(to.span()).err(&key, &m))?;
        rewrite.insert(source, target);
    }
    Ok(RunDefaults {
        user,
        grace_period,
        kill_process_group: raw.kill_process_group.unwrap_or(false),
        rewrite,
    })
}

fn parallelism(ov: &Overrides, raw: &RawMigration, src: &Source<'_>) -> Result<Option<usize>> {
    let v = match (ov.parallelism, raw.parallelism) {
        (Some(n), _) => return Ok(Some(n)),
        (None, None) => return Ok(None),
        (None, Some(v)) => v,
    };
    if !(1..=MAX_PARALLELISM as i64).contains(&v) {
        // Serde gives no span for a plain integer: find the key.
        let w = match src.text.find("parallelism") {
            Some(i) => src.at(i..i),
            None => src.nowhere(),
        };
        return Err(w.err(
            "migration.parallelism",
            &format!("must be between 1 and {MAX_PARALLELISM}, got {v}"),
        ));
    }
    Ok(Some(v as usize))
}

/// A component named like the hidden siblings sharelink makes
/// (`.<name>.sharelink-staging` and the like).
fn own_name(p: &Path) -> Option<&std::ffi::OsStr> {
    p.components().find_map(|c| match c {
        Component::Normal(n)
            if n.as_encoded_bytes().starts_with(b".")
                && n.as_encoded_bytes()
                    .windows(b".sharelink-".len())
                    .any(|w| w == b".sharelink-") =>
        {
            Some(n)
        }
        _ => None,
    })
}

fn displaced_keep(raw: &RawDisplaced, src: &Source<'_>) -> Result<Option<Keep>> {
    match &raw.keep {
        Some(k) => keep(k.get_ref())
            .map(Some)
            .map_err(|m| src.at(k.span()).err("displaced.keep", &m)),
        None => Ok(None),
    }
}

fn links(
    raw: &BTreeMap<Spanned<String>, Spanned<RawLink>>,
    src: &Source<'_>,
    default_keep: Option<Keep>,
) -> Result<Vec<Link>> {
    let mut links = Vec::with_capacity(raw.len());
    for (key, value) in raw {
        let w = src.at(key.span());
        let name = format!("links.{:?}", key.get_ref());
        let app = rel_path(key.get_ref()).map_err(|m| w.err(&name, &m))?;
        let table = &value.get_ref().0;
        let share = rel_path(&table.share).map_err(|m| w.err(&format!("{name}.share"), &m))?;
        if share.components().next() == Some(Component::Normal(RESERVED_DIR.as_ref())) {
            return Err(w.err(
                &format!("{name}.share"),
                &format!("{RESERVED_DIR}/ is reserved for sharelink's own state"),
            ));
        }
        let mut dirs = Vec::with_capacity(table.dirs.len());
        for d in &table.dirs {
            dirs.push(rel_path(d).map_err(|m| w.err(&format!("{name}.dirs"), &m))?);
        }
        for (what, p) in [(name.clone(), &app), (format!("{name}.share"), &share)]
            .into_iter()
            .chain(dirs.iter().map(|d| (format!("{name}.dirs"), d)))
        {
            if let Some(c) = own_name(p) {
                return Err(w.err(
                    &what,
                    &format!(
                        "{c:?} is named like sharelink's own entries beside a data directory (staging copies, markers), which it may remove"
                    ),
                ));
            }
        }
        links.push(Link {
            app,
            share,
            dirs,
            migrate: table.migrate,
            keep: match &table.keep {
                Some(k) => Some(keep(k).map_err(|m| w.err(&format!("{name}.keep"), &m))?),
                None => default_keep,
            },
            line: w.line,
        });
    }
    // File order reads better in `status` than key order.
    links.sort_unstable_by_key(|l| l.line);
    Ok(links)
}

struct Where<'a> {
    origin: &'a Path,
    line: Option<usize>,
}

impl Where<'_> {
    fn err(&self, key: &str, msg: &str) -> Error {
        match self.line {
            Some(l) => Error::Config(format!(
                "config {} line {l}: {key}: {msg}",
                self.origin.display()
            )),
            None => Error::Config(format!("config {}: {key}: {msg}", self.origin.display())),
        }
    }
}

fn root(
    key: &str,
    flag: Option<&Path>,
    file: Option<&Spanned<String>>,
    src: &Source<'_>,
) -> Result<PathBuf> {
    let (value, w) = match (flag, file) {
        (Some(p), _) => (p.to_path_buf(), src.nowhere()),
        (None, Some(s)) => (PathBuf::from(s.get_ref()), src.at(s.span())),
        (None, None) => {
            return Err(Error::Config(format!(
                "config {}: {key} is missing (set it in the file or with --{})",
                src.origin.display(),
                key.replace('_', "-")
            )))
        }
    };
    if !value.is_absolute() {
        return Err(w.err(key, &format!("must be an absolute path, got {:?}", value)));
    }
    let mut out = PathBuf::from("/");
    for c in value.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(w.err(key, &format!("must not contain '..', got {:?}", value)))
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A path relative to a root: non-empty, not absolute, no `.` or `..`.
/// Repeated and trailing slashes are tolerated and normalised away.
fn rel_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.starts_with('/') {
        return Err(format!("must be relative, got {s:?}"));
    }
    if s.contains('\0') {
        return Err(format!("must not contain a NUL byte, got {s:?}"));
    }
    let mut out = PathBuf::new();
    for part in s.split('/') {
        match part {
            "" => {}
            "." | ".." => return Err(format!("must not contain '{part}', got {s:?}")),
            p => out.push(p),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("must name a directory, got {s:?}"));
    }
    Ok(out)
}

/// Parse `"500ms"`, `"3s"`, `"2m"`, `"1h"`, `"30d"` (and `"0"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("bad duration {s:?}: use a whole number with ms, s, m, h or d, like \"500ms\", \"3s\", \"2m\"")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    // No space between number and unit: "3 s" is not a duration here.
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(bad)?),
        "" if n == 0 => Duration::ZERO,
        _ => return Err(bad()),
    };
    // Deadlines are `now + d`: keep them far from the clock's range.
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is too long: at most 8760h (a year)"
        ));
    }
    Ok(d)
}

/// The longest duration a setting may have.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The app path is replaced by a symlink whose target is the share path:
/// both must be usable as paths (a symlink's target is at most PATH_MAX
/// bytes, a name at most NAME_MAX). Checked here so that a link that can
/// never be made is a config error, not a failure after a full copy.
fn check_lengths(cfg: &Config) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const PATH_MAX: usize = 4095;
    const NAME_MAX: usize = 255;
    for l in &cfg.links {
        for (side, p) in [("app", cfg.app_path(l)), ("share", cfg.share_path(l))] {
            let long_name = p.components().find(|c| c.as_os_str().len() > NAME_MAX);
            let why = if p.as_os_str().len() > PATH_MAX {
                format!(
                    "is {} bytes long; a path may have at most {PATH_MAX}",
                    p.as_os_str().len()
                )
            } else if let Some(c) = long_name {
                format!(
                    "has a {}-byte name {:?}; a name may have at most {NAME_MAX}",
                    c.as_os_str().as_bytes().len(),
                    c.as_os_str()
                )
            } else {
                continue;
            };
            let key = match l.line {
                Some(n) => format!("links.{:?} (line {n})", l.app.display().to_string()),
                None => format!("links.{:?}", l.app.display().to_string()),
            };
            return Err(Error::Config(format!(
                "config {}: {key}: the {side} path {} {why}",
                cfg.origin.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// Two links may not overlap on the app side or on the share side, and no
/// app directory may contain (or sit inside) a share target.
///
/// Sorting makes this O(n log n): if `a` is a prefix of `b`, every path
/// sorted between them also starts with `a`, so a prefix always shows up
/// between neighbours.
fn check_overlaps(cfg: &Config) -> Result<()> {
    let describe = |l: &Link| match l.line {
        Some(n) => format!("links.{:?} (line {n})", l.app.display().to_string()),
        None => format!("links.{:?}", l.app.display().to_string()),
    };
    for (side, get) in [
        ("app", (|l: &Link| l.app.clone()) as fn(&Link) -> PathBuf),
        ("share", |l: &Link| l.share.clone()),
    ] {
        let mut v: Vec<(PathBuf, &Link)> = cfg.links.iter().map(|l| (get(l), l)).collect();
        v.sort_unstable_by(|a, b| a.0.components().cmp(b.0.components()));
        for w in v.windows(2) {
            if w[1].0.starts_with(&w[0].0) {
                let how = if w[0].0 == w[1].0 {
                    "is the same"
                } else {
                    "contains"
                };
                return Err(Error::Config(format!(
                    "config {}: {} and {} overlap on the {side} side: {side} path {:?} {how} {:?}",
                    cfg.origin.display(),
                    describe(w[0].1),
                    describe(w[1].1),
                    w[0].0,
                    w[1].0
                )));
            }
        }
    }
    for l in &cfg.links {
        let app = cfg.app_path(l);
        let share = cfg.share_path(l);
        if app.starts_with(&share) || share.starts_with(&app) {
            return Err(Error::Config(format!(
                "config {}: {}: app path {} and share path {} overlap",
                cfg.origin.display(),
                describe(l),
                app.display(),
                share.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
