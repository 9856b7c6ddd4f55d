//! Log setup: human text or one JSON object per line, always on stderr
//! (stdout belongs to `status`, `link --dry-run` and the pipeline).
//!
//! `SHARELINK_LOG` takes a level (`debug`) or a filter (`sharelink=debug,warn`);
//! without it `-v`/`-q` move the default `info` up or down.
//!
//! The subscriber is our own small one (tracing-subscriber gives the filter
//! syntax, [`Targets`]) rather than `tracing_subscriber::fmt` over a span
//! registry: sharelink is every container's PID 1, has no spans, and the
//! fmt machinery (and `EnvFilter`'s regex engine) cost more binary size and
//! start-up than two fixed line formats are worth.

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{span, Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::Targets;

/// Lines with no fields of their own, formatted by the caller and written
/// through one event per level: every `tracing` call site costs about a
/// kilobyte of the binary every container starts. Lines that machines read
/// field by field (per link, progress, losses) stay `tracing` events.
/// Filters still select these by level and by crate.
#[macro_export]
macro_rules! log_line {
    ($level:ident, $($t:tt)*) => {
        if tracing::level_filters::LevelFilter::current() >= tracing::Level::$level {
            $crate::logging::line(tracing::Level::$level, format_args!($($t)*))
        }
    };
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log_line!(ERROR, $($t)*) };
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log_line!(WARN, $($t)*) };
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log_line!(INFO, $($t)*) };
}

#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log_line!(DEBUG, $($t)*) };
}

#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => { $crate::log_line!(TRACE, $($t)*) };
}

#[doc(hidden)]
pub(crate) fn line(level: Level, args: std::fmt::Arguments<'_>) {
    match level {
        Level::ERROR => tracing::error!("{args}"),
        Level::WARN => tracing::warn!("{args}"),
        Level::INFO => tracing::info!("{args}"),
        Level::DEBUG => tracing::debug!("{args}"),
        _ => tracing::trace!("{args}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Install the global subscriber. `verbosity` is `-v` count minus `-q` count.
pub(crate) fn init(format: LogFormat, verbosity: i8) {
    let default = match verbosity {
        i8::MIN..=-2 => LevelFilter::ERROR,
        -1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let mut bad_filter = None;
    let filter = match std::env::var("SHARELINK_LOG") {
        Ok(s) if !s.trim().is_empty() => Targets::from_str(s.trim()).unwrap_or_else(|_| {
            bad_filter = Some(s);
            Targets::new().with_default(default)
        }),
        _ => Targets::new().with_default(default),
    };
    let _ = tracing::subscriber::set_global_default(LineWriter { format, filter });
    if let Some(s) = bad_filter {
        crate::warn!("SHARELINK_LOG={s:?} is not a level or filter; using the default");
    }
}

/// Writes each event as one line to stderr. sharelink has no spans, so
/// this is the whole subscriber: no span registry behind it.
struct LineWriter {
    format: LogFormat,
    filter: Targets,
}

/// An event's message and fields. Reused across events (thread-local) so a
/// line costs no allocation once warm: `link` of 1,000 entries writes 1,000.
#[derive(Default)]
struct Fields {
    message: String,
    /// All field values back to back; `pairs` index into it.
    values: String,
    pairs: Vec<(&'static str, std::ops::Range<usize>)>,
}

impl Fields {
    fn clear(&mut self) {
        self.message.clear();
        self.values.clear();
        self.pairs.clear();
    }
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs
            .iter()
            .map(|(k, r)| (*k, &self.values[r.clone()]))
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let start = self.values.len();
            self.values.push_str(value);
            self.pairs.push((field.name(), start..self.values.len()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let start = self.values.len();
            let _ = write!(self.values, "{value:?}");
            self.pairs.push((field.name(), start..self.values.len()));
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Fields, String, Stamp)> = Default::default();
}

impl Subscriber for LineWriter {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if self.enabled(m) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.filter.would_enable(m.target(), m.level())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(
            self.filter.default_level().unwrap_or(LevelFilter::OFF).max(
                self.filter
                    .iter()
                    .map(|(_, l)| l)
                    .max()
                    .unwrap_or(LevelFilter::OFF),
            ),
        )
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        SCRATCH.with(|cell| {
            let Ok(mut scratch) = cell.try_borrow_mut() else {
                return; // an event logged while formatting one: drop it
            };
            let (fields, line, stamp) = &mut *scratch;
            fields.clear();
            line.clear();
            event.record(fields);
            format_line(
                line,
                self.format,
                std::time::SystemTime::now(),
                *event.metadata().level(),
                fields,
                stamp,
            );
            // One write per line so concurrent writers (the pipeline shares
            // stderr) do not interleave within a line.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        });
    }
}

/// The "2026-11-26T22:45:01" part of the timestamp, remade only when the
/// second changes (a burst of lines shares it).
#[derive(Default)]
struct Stamp {
    secs: u64,
    text: String,
}

fn format_line(
    s: &mut String,
    format: LogFormat,
    now: std::time::SystemTime,
    level: Level,
    f: &Fields,
    stamp: &mut Stamp,
) {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if stamp.text.is_empty() || stamp.secs != since.as_secs() {
        stamp.secs = since.as_secs();
        stamp.text = crate::clock::Utc::at(now).iso();
    }
    let ms = since.subsec_millis();
    let ts = |s: &mut String| {
        let _ = write!(s, "{}.{ms:03}Z", stamp.text);
    };
    match format {
        LogFormat::Text => {
            ts(s);
            let _ = write!(s, " {:>5} sharelink: {}", level.as_str(), f.message);
            for (k, v) in f.pairs() {
                let _ = write!(s, " {k}={v}");
            }
        }
        LogFormat::Json => {
            s.push_str("{\"timestamp\":\"");
            ts(s);
            let _ = write!(s, "\",\"level\":\"{}\",\"message\":", level.as_str());
            json_str(s, &f.message);
            for (k, v) in f.pairs() {
                s.push(',');
                json_str(s, k);
                s.push(':');
                json_str(s, v);
            }
            s.push('}');
        }
    }
    s.push('\n');
}

/// Append `v` as a JSON string literal.
pub(crate) fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn line(
        format: LogFormat,
        t: SystemTime,
        level: Level,
        msg: &str,
        pairs: &[(&'static str, &str)],
    ) -> String {
        let mut f = Fields::default();
        f.message.push_str(msg);
        for (k, v) in pairs {
            let start = f.values.len();
            f.values.push_str(v);
            f.pairs.push((k, start..f.values.len()));
        }
        let mut s = String::new();
        format_line(&mut s, format, t, level, &f, &mut Stamp::default());
        s
    }

    #[test]
    fn json_lines_parse() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_733_101_042);
        let line = line(
            LogFormat::Json,
            t,
            Level::WARN,
            "a \"quoted\"\nmessage",
            &[("link", "x\ty")],
        );
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["timestamp"], "2026-11-26T22:45:01.042Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "a \"quoted\"\nmessage");
        assert_eq!(v["link"], "x\ty");
    }

    #[test]
    fn text_lines() {
        let line = line(
            LogFormat::Text,
            UNIX_EPOCH,
            Level::INFO,
            "hello",
            &[("link", "data")],
        );
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z  INFO sharelink: hello link=data\n"
        );
    }
}
