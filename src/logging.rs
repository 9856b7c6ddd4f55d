//! Log setup: human text or one JSON object per line, always on stderr
//! (stdout belongs to `status`, `link --dry-run` and the pipeline).
//!
//! `SHARELINK_LOG` takes a level (`debug`) or a filter (`sharelink=debug,warn`);
//! without it `-v`/`-q` move the default `info` up or down.
//!
//! The line writer is our own small [`Layer`] rather than
//! `tracing_subscriber::fmt`: sharelink is every container's PID 1, and the
//! fmt machinery (and `EnvFilter`'s regex engine) cost more binary size and
//! start-up than two fixed line formats are worth.

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the global subscriber. `verbosity` is `-v` count minus `-q` count.
pub fn init(format: LogFormat, verbosity: i8) {
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
    tracing_subscriber::registry()
        .with(LineWriter { format }.with_filter(filter))
        .init();
    if let Some(s) = bad_filter {
        tracing::warn!(filter = %s, "SHARELINK_LOG is not a level or filter; using the default");
    }
}

/// Writes each event as one line to stderr.
struct LineWriter {
    format: LogFormat,
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.pairs.push((field.name(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.pairs.push((field.name(), format!("{value:?}")));
        }
    }
}

impl<S: Subscriber> Layer<S> for LineWriter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let line = format_line(
            self.format,
            std::time::SystemTime::now(),
            *event.metadata().level(),
            &f.message,
            &f.pairs,
        );
        // One write per line so concurrent writers (the pipeline shares
        // stderr) do not interleave within a line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

fn format_line(
    format: LogFormat,
    now: std::time::SystemTime,
    level: Level,
    message: &str,
    pairs: &[(&str, String)],
) -> String {
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    let stamp = crate::fsutil::utc_stamp(now);
    // 20261126T224501Z -> 2026-11-26T22:45:01.123Z
    let ts = format!(
        "{}-{}-{}T{}:{}:{}.{ms:03}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    let mut s = String::with_capacity(128);
    match format {
        LogFormat::Text => {
            let _ = write!(s, "{ts} {:>5} sharelink: {message}", level.as_str());
            for (k, v) in pairs {
                let _ = write!(s, " {k}={v}");
            }
        }
        LogFormat::Json => {
            let _ = write!(
                s,
                "{{\"timestamp\":\"{ts}\",\"level\":\"{}\",\"message\":",
                level.as_str()
            );
            json_str(&mut s, message);
            for (k, v) in pairs {
                s.push(',');
                json_str(&mut s, k);
                s.push(':');
                json_str(&mut s, v);
            }
            s.push('}');
        }
    }
    s.push('\n');
    s
}

fn json_str(out: &mut String, v: &str) {
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
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn json_lines_parse() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_733_101_042);
        let line = format_line(
            LogFormat::Json,
            t,
            Level::WARN,
            "a \"quoted\"\nmessage",
            &[("link", "x\ty".into())],
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
        let line = format_line(
            LogFormat::Text,
            UNIX_EPOCH,
            Level::INFO,
            "hello",
            &[("link", "data".into())],
        );
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z  INFO sharelink: hello link=data\n"
        );
    }
}
