//! The TOML config: schema, defaults, command-line overrides and validation.
//!
//! Everything here is pure (text in, [`Config`] or [`Error::Config`] out)
//! except [`load`], which reads the file. Every rejection names the key and,
//! where the parser knows it, the line, and maps to exit 78.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::signals::{self, Rewrites};

pub const DEFAULT_PATH: &str = "/etc/sharelink/sharelink.toml";
/// Reserved directory in the share for locks, displaced files and the like.
pub const RESERVED_DIR: &str = ".sharelink";

/// A validated config with overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from (for messages).
    pub origin: PathBuf,
    pub app_root: PathBuf,
    pub share_root: PathBuf,
    pub require_mount: bool,
    /// Accept a Docker volume on the local disk as the share.
    pub allow_local_volume: bool,
    pub mount_timeout: Duration,
    /// In file order.
    pub links: Vec<Link>,
    pub run: RunDefaults,
    pub migration: MigrationSettings,
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
    pub migrate: MigrateMode,
    /// How long set-aside copies under `displaced/` are kept: the link's
    /// own `keep`, else `[displaced] keep`; `None` keeps them all.
    pub keep: Option<Keep>,
    /// 1-based line of the entry in the config, when known.
    pub line: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrateMode {
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
pub enum Keep {
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
pub struct RunDefaults {
    pub user: Option<String>,
    pub grace_period: Duration,
    pub kill_process_group: bool,
    /// `rewrite = { TERM = "INT-if-uncaught" }`: signals forwarded as
    /// another one.
    pub rewrite: Rewrites,
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
pub struct MigrationSettings {
    /// Copies and comparisons in flight at once; `None`: chosen from the
    /// share's filesystem type ([`MigrationSettings::threads`]).
    pub parallelism: Option<usize>,
}

/// Bounds of `parallelism`.
pub const MAX_PARALLELISM: usize = 256;

impl MigrationSettings {
    /// Workers for a migration into `share_root`. On a network share each
    /// operation waits for a round trip, so many are kept in flight; on a
    /// local disk the work is CPU- and syscall-bound, so one per CPU.
    pub fn threads(&self, share_root: &Path) -> usize {
        if let Some(n) = self.parallelism {
            return n;
        }
        if is_network_fs(share_root) {
            32
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
    pub fn app_path(&self, link: &Link) -> PathBuf {
        self.app_root.join(&link.app)
    }
    pub fn share_path(&self, link: &Link) -> PathBuf {
        self.share_root.join(&link.share)
    }
}

// ---- raw schema -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    app_root: Option<Spanned<String>>,
    share_root: Option<Spanned<String>>,
    require_mount: Option<bool>,
    allow_local_volume: Option<bool>,
    mount_timeout: Option<Spanned<String>>,
    #[serde(default)]
    links: BTreeMap<Spanned<String>, Spanned<RawLink>>,
    #[serde(default)]
    run: RawRun,
    #[serde(default)]
    migration: RawMigration,
    #[serde(default)]
    displaced: RawDisplaced,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDisplaced {
    keep: Option<Spanned<RawKeep>>,
}

/// `keep`: a count (`5`) or an age (`"30d"`).
enum RawKeep {
    Age(String),
    Count(i64),
}

impl<'de> Deserialize<'de> for RawKeep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawKeep;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a count of set-aside copies like 5, or an age like \"30d\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKeep, E> {
                Ok(RawKeep::Age(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKeep, E> {
                Ok(RawKeep::Count(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A validated `keep`: zero would delete the copy just set aside.
fn keep(raw: &RawKeep) -> Result<Keep, String> {
    match raw {
        RawKeep::Count(n) if (1..=i64::from(u32::MAX)).contains(n) => Ok(Keep::Count(*n as u32)),
        RawKeep::Count(n) => Err(format!(
            "must keep at least 1 set-aside copy, got {n} (to keep by age, write an age like \"30d\")"
        )),
        RawKeep::Age(s) => match parse_duration(s)? {
            d if d.is_zero() => Err(format!(
                "an age of {s:?} would delete every set-aside copy; use an age like \"30d\" or a count like 5"
            )),
            d => Ok(Keep::Age(d)),
        },
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    parallelism: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRun {
    user: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
    kill_process_group: Option<bool>,
    rewrite: Option<BTreeMap<Spanned<String>, Spanned<RawSignal>>>,
}

/// A signal in the config: a name (`"INT"`) or a number (`2`, `0`).
enum RawSignal {
    Name(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSignal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name like \"INT\" or a number (0 drops the signal)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSignal, E> {
                Ok(RawSignal::Name(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSignal, E> {
                Ok(RawSignal::Number(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLinkTable {
    share: String,
    #[serde(default)]
    dirs: Vec<String>,
    #[serde(default = "default_migrate")]
    migrate: MigrateMode,
    // Not `Spanned`: inside a link table the span would not survive the
    // map visitor; errors name the link's line instead.
    keep: Option<RawKeep>,
}

fn default_migrate() -> MigrateMode {
    MigrateMode::IfEmpty
}

/// `"app" = "share"` or `"app" = { share = …, dirs = […], migrate = … }`.
/// A hand-written visitor rather than `#[serde(untagged)]` so that a typo in
/// the table form reports the unknown key instead of "did not match any
/// variant".
struct RawLink(RawLinkTable);

impl<'de> Deserialize<'de> for RawLink {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawLink;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a share path string or a table { share = \"…\", dirs = […], migrate = \"if-empty\"|\"merge\"|\"image-wins\", keep = 5|\"30d\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLink, E> {
                Ok(RawLink(RawLinkTable {
                    share: v.to_string(),
                    dirs: Vec::new(),
                    migrate: MigrateMode::IfEmpty,
                    keep: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawLink, A::Error> {
                RawLinkTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawLink)
            }
        }
        d.deserialize_any(V)
    }
}

// ---- loading ----------------------------------------------------------------

/// Where the config is: `--config`, else `$SHARELINK_CONFIG`, else the default.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("SHARELINK_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Read, parse and validate the config at `path`.
pub fn load(path: &Path, ov: &Overrides) -> Result<Config> {
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
pub fn rel_path(s: &str) -> Result<PathBuf, String> {
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
mod tests {
    use super::*;
    use crate::exit_code::ExitCode;

    fn p(text: &str) -> Result<Config> {
        parse(text, Path::new("t.toml"), &Overrides::default())
    }
    fn err(text: &str) -> String {
        let e = p(text).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Config, "{e}");
        e.to_string()
    }
    const ROOTS: &str = "app_root = \"/app\"\nshare_root = \"/mnt/fileshare\"\n";

    #[test]
    fn spec_example_parses() {
        let c = p(r#"
app_root = "/app"
share_root = "/mnt/fileshare"
require_mount = true
mount_timeout = "30s"

[links]
"modelling/predictions" = "modelling/predictions"
"scraping/scraped_data" = "scraping/scraped_data"
"forecasting/data" = { share = "forecasting/data", dirs = ["input", "output"] }
"modelling/cache"  = { share = "modelling/cache", dirs = ["sarima_params", "time_moe_cache"], migrate = "merge" }

[run]
user = "app"
grace_period = "3s"
kill_process_group = false
"#)
        .unwrap();
        assert_eq!(c.app_root, Path::new("/app"));
        assert_eq!(c.mount_timeout, Duration::from_secs(30));
        assert_eq!(c.links.len(), 4);
        // File order, not key order.
        assert_eq!(c.links[0].app, Path::new("modelling/predictions"));
        assert_eq!(
            c.links[2].dirs,
            vec![PathBuf::from("input"), PathBuf::from("output")]
        );
        assert_eq!(c.links[3].migrate, MigrateMode::Merge);
        assert_eq!(c.links[0].migrate, MigrateMode::IfEmpty);
        assert_eq!(c.links[0].line, Some(8));
        assert_eq!(c.run.user.as_deref(), Some("app"));
        assert_eq!(
            c.share_path(&c.links[2]),
            Path::new("/mnt/fileshare/forecasting/data")
        );
    }

    #[test]
    fn defaults() {
        let c = p(ROOTS).unwrap();
        assert!(c.require_mount);
        assert_eq!(c.mount_timeout, Duration::ZERO);
        assert_eq!(c.run, RunDefaults::default());
        assert!(c.links.is_empty());
    }

    #[test]
    fn overrides_win() {
        let ov = Overrides {
            app_root: Some("/other".into()),
            share_root: None,
            require_mount: Some(false),
            parallelism: Some(7),
        };
        let c = parse(
            &format!("{ROOTS}[migration]\nparallelism = 3\n"),
            Path::new("t"),
            &ov,
        )
        .unwrap();
        assert_eq!(c.app_root, Path::new("/other"));
        assert!(!c.require_mount);
        assert_eq!(c.migration.parallelism, Some(7));
        // A root may come from the command line alone.
        let c = parse("share_root = \"/s\"", Path::new("t"), &ov).unwrap();
        assert_eq!(c.app_root, Path::new("/other"));
    }

    #[test]
    fn unknown_keys_named_with_line() {
        let e = err(&format!("{ROOTS}colour = 1\n"));
        assert!(e.contains("colour") && e.contains("line 3"), "{e}");
        let e = err(&format!("{ROOTS}[links]\n\"a\" = {{ shar = \"a\" }}\n"));
        assert!(e.contains("shar") && e.contains("line 4"), "{e}");
        let e = err(&format!("{ROOTS}[run]\nusr = \"x\"\n"));
        assert!(e.contains("usr"), "{e}");
    }

    #[test]
    fn roots_must_be_absolute_and_present() {
        assert!(err("share_root = \"/s\"").contains("app_root is missing"));
        let e = err("app_root = \"app\"\nshare_root = \"/s\"");
        assert!(
            e.contains("app_root") && e.contains("absolute") && e.contains("line 1"),
            "{e}"
        );
        let e = err("app_root = \"/app\"\nshare_root = \"/s/../x\"");
        assert!(e.contains("share_root") && e.contains(".."), "{e}");
    }

    #[test]
    fn bad_link_paths() {
        for (k, v, what) in [
            ("", "x", "empty"),
            ("/abs", "x", "relative"),
            ("a/../b", "x", ".."),
            ("./a", "x", "'.'"),
            ("a", "", "empty"),
            ("a", "/abs", "relative"),
            ("a", "x/..", ".."),
            ("a", ".sharelink/x", "reserved"),
            ("a", ".data.sharelink-staging", "sharelink's own"),
            ("a", "x/.data.sharelink-staging/y", "sharelink's own"),
            ("m/.data.sharelink-committed", "x", "sharelink's own"),
        ] {
            let e = err(&format!("{ROOTS}[links]\n{k:?} = {v:?}\n"));
            assert!(e.contains(what) && e.contains("line 4"), "{k} {v}: {e}");
        }
        let e = err(&format!(
            "{ROOTS}[links]\n\"a\" = {{ share = \"a\", dirs = [\"../x\"] }}\n"
        ));
        assert!(e.contains("dirs") && e.contains(".."), "{e}");
        let e = err(&format!(
            "{ROOTS}[links]\n\"a\" = {{ share = \"a\", dirs = [\"/x\"] }}\n"
        ));
        assert!(e.contains("dirs"), "{e}");
    }

    #[test]
    fn trailing_and_double_slashes_normalise() {
        let c = p(&format!("{ROOTS}[links]\n\"a//b/\" = \"x/y/\"\n")).unwrap();
        assert_eq!(c.links[0].app, Path::new("a/b"));
        assert_eq!(c.links[0].share, Path::new("x/y"));
    }

    #[test]
    fn overlaps_rejected() {
        for (a, b) in [
            ("\"a\" = \"x\"\n\"a/b\" = \"y\"", "app"),
            ("\"a\" = \"x\"\n\"b\" = \"x/y\"", "share"),
            ("\"a\" = \"x\"\n\"b\" = \"x\"", "share"),
            ("\"a\" = \"x\"\n\"a//\" = \"y\"", ""),
        ] {
            let text = format!("{ROOTS}[links]\n{a}\n");
            let e = p(&text).unwrap_err().to_string();
            assert!(e.contains("overlap") || e.contains("duplicate"), "{a}: {e}");
            assert!(e.contains(b), "{a}: {e}");
        }
        // Siblings with a common name prefix do not overlap.
        p(&format!(
            "{ROOTS}[links]\n\"ab\" = \"xy\"\n\"a\" = \"x\"\n\"a-b\" = \"x-y\"\n"
        ))
        .unwrap();
        // A share target inside an app link.
        let e =
            err("app_root = \"/app\"\nshare_root = \"/app/share\"\n[links]\n\"share\" = \"x\"\n");
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn migrate_values() {
        let e = err(&format!(
            "{ROOTS}[links]\n\"a\" = {{ share = \"a\", migrate = \"always\" }}\n"
        ));
        assert!(e.contains("always") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn image_wins_and_keep() {
        let c = p(&format!(
            "{ROOTS}[displaced]\nkeep = \"30d\"\n[links]\n\"a\" = {{ share = \"a\", migrate = \"image-wins\", keep = 5 }}\n\"b\" = \"b\"\n"
        ))
        .unwrap();
        assert_eq!(c.links[0].migrate, MigrateMode::ImageWins);
        assert_eq!(c.links[0].migrate.to_string(), "image-wins");
        // The link's own setting wins over `[displaced] keep`.
        assert_eq!(c.links[0].keep, Some(Keep::Count(5)));
        assert_eq!(
            c.links[1].keep,
            Some(Keep::Age(Duration::from_secs(30 * 86400)))
        );
        assert_eq!(p(ROOTS).unwrap().links.len(), 0);
        let c = p(&format!("{ROOTS}[links]\n\"a\" = \"a\"\n")).unwrap();
        assert_eq!(c.links[0].keep, None, "keeps everything by default");
        // Shown as it would be written.
        for (k, shown) in [
            (Keep::Count(5), "5"),
            (Keep::Age(Duration::from_secs(30 * 86400)), "30d"),
            (Keep::Age(Duration::from_secs(36 * 3600)), "36h"),
            (Keep::Age(Duration::from_secs(90 * 60)), "90m"),
            (Keep::Age(Duration::from_secs(61)), "61s"),
            (Keep::Age(Duration::from_millis(1500)), "1500ms"),
        ] {
            assert_eq!(k.to_string(), shown);
        }
        for (table, culprit) in [
            ("keep = 0", "at least 1"),
            ("keep = -3", "at least 1"),
            ("keep = \"0d\"", "every set-aside copy"),
            ("keep = \"soon\"", "bad duration"),
            ("keep = \"400d\"", "too long"),
            ("keep = true", "a count of set-aside copies"),
        ] {
            let e = err(&format!(
                "{ROOTS}[links]\n\"a\" = {{ share = \"a\", {table} }}\n"
            ));
            assert!(
                e.contains("line 4")
                    && e.contains(culprit)
                    && (e.contains("keep") || table.contains("true")),
                "{table}: {e}"
            );
            if !table.contains("true") {
                assert!(e.contains("links.\"a\".keep"), "{table}: {e}");
            }
            let e = err(&format!("{ROOTS}\n[displaced]\n{table}\n"));
            assert!(e.contains("line 5") && e.contains(culprit), "{table}: {e}");
            if !table.contains("true") {
                assert!(e.contains("displaced.keep"), "{table}: {e}");
            }
        }
        let e = err(&format!("{ROOTS}[displaced]\nkeeep = 3\n"));
        assert!(e.contains("keeep") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert!(parse_duration("366d").unwrap_err().contains("too long"));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for long in ["8761h", "18446744073709551615s", "5124095576030431h"] {
            assert!(
                parse_duration(long).unwrap_err().contains("too long"),
                "{long}"
            );
        }
        for bad in [
            "",
            "3",
            "s",
            "-1s",
            "1.5s",
            "3 sec",
            "3 s",
            "500 ms",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Surrounding spaces are trimmed; a space inside is refused (78).
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
        let e = err(&format!("{ROOTS}[run]\ngrace_period = \"3 s\"\n"));
        assert!(
            e.contains("run.grace_period") && e.contains("\"3 s\""),
            "{e}"
        );
        let e = err(&format!("{ROOTS}mount_timeout = \"soon\"\n"));
        assert!(e.contains("mount_timeout") && e.contains("line 3"), "{e}");
        let e = err(&format!("{ROOTS}[run]\ngrace_period = \"3\"\n"));
        assert!(
            e.contains("run.grace_period") && e.contains("line 4"),
            "{e}"
        );
    }

    #[test]
    fn rewrite_table() {
        let c = p(&format!(
            "{ROOTS}[run]\nrewrite = {{ TERM = \"INT\", sighup = 0, 10 = \"SIGUSR2\" }}\n"
        ))
        .unwrap();
        let never = || None;
        assert_eq!(
            c.run.rewrite.apply(libc::SIGTERM, never),
            Some(libc::SIGINT)
        );
        assert_eq!(c.run.rewrite.apply(libc::SIGHUP, never), None);
        assert_eq!(
            c.run.rewrite.apply(libc::SIGUSR1, never),
            Some(libc::SIGUSR2)
        );
        let c = p(&format!(
            "{ROOTS}[run]\nrewrite = {{ TERM = \"INT-if-uncaught\" }}\n"
        ))
        .unwrap();
        assert!(c.run.rewrite.is_conditional());
        for (table, culprit) in [
            ("{ TERM = \"BOGUS\" }", "run.rewrite.TERM"),
            ("{ BOGUS = \"INT\" }", "run.rewrite.BOGUS"),
            ("{ KILL = \"INT\" }", "SIGKILL"),
            ("{ STOP = \"INT\" }", "SIGSTOP"),
            ("{ TERM = 99 }", "99"),
            ("{ TERM = true }", "line 4"),
        ] {
            let e = err(&format!("{ROOTS}[run]\nrewrite = {table}\n"));
            assert!(e.contains(culprit) && e.contains("line 4"), "{table}: {e}");
        }
    }

    #[test]
    fn wrong_types_named() {
        let e = err(&format!("{ROOTS}require_mount = \"yes\"\n"));
        assert!(e.contains("require_mount") || e.contains("line 3"), "{e}");
        let e = err(&format!("{ROOTS}[links]\n\"a\" = 3\n"));
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn parallelism_is_bounded_and_paths_must_fit() {
        let e = err(&format!("{ROOTS}[migration]\nparallelism = 0\n"));
        assert!(
            e.contains("line 4") && e.contains("migration.parallelism"),
            "{e}"
        );
        let c = p(&format!("{ROOTS}[migration]\nparallelism = 64\n")).unwrap();
        assert_eq!(c.migration.threads(Path::new("/")), 64);
        let long = "d/".repeat(2100);
        let e = err(&format!("{ROOTS}[links]\n\"{long}x\" = \"s\"\n"));
        assert!(
            e.contains("the app path") && e.contains("at most 4095"),
            "{e}"
        );
        let name = "n".repeat(256);
        let e = err(&format!("{ROOTS}[links]\n\"a\" = \"{name}\"\n"));
        assert!(
            e.contains("share path") && e.contains("256-byte name"),
            "{e}"
        );
    }
}
