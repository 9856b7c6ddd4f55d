//! Log setup: human text or one JSON object per line, always on stderr
//! (stdout belongs to `status`, `link --dry-run` and the pipeline).
//!
//! `SHARELINK_LOG` takes a level (`debug`) or a filter (`sharelink=debug,warn`);
//! without it `-v`/`-q` move the default `info` up or down. The filter is
//! `tracing_subscriber::filter::Targets`, not `EnvFilter`, to keep the regex
//! engine out of a binary that is every container's PID 1.

use std::str::FromStr;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
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
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            let ansi = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
            registry.with(fmt.with_ansi(ansi)).init()
        }
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(false))
            .init(),
    }
    if let Some(s) = bad_filter {
        tracing::warn!(filter = %s, "SHARELINK_LOG is not a level or filter; using the default");
    }
}
