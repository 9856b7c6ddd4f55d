//! The command line and the dispatch of each command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use std::io::Write as _;

use anyhow::Context as _;

use crate::config::{self, Config, Overrides};
use crate::error::{Error, ExitCode, Result};
use crate::init::{self, user};
use crate::link::{self, mounts, plan, status, Owner};
use crate::logging::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "sharelink",
    version,
    about = "Link data directories into a mounted file share, crash-safely, then run the pipeline as PID 1",
    after_help = "Exit codes: 0 ok, 1 unhealthy (status), 2 usage, 65 unsafe filesystem content, \
69 share unavailable, 73 cannot write, 74 I/O error, 78 bad config, 126/127 command not \
executable/found, N or 128+S the command's status."
)]
pub struct Cli {
    /// Config file [default: $SHARELINK_CONFIG or /etc/sharelink/sharelink.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Override app_root
    #[arg(long, global = true, env = "SHARELINK_APP_ROOT", value_name = "DIR")]
    pub app_root: Option<PathBuf>,
    /// Override share_root
    #[arg(long, global = true, env = "SHARELINK_SHARE_ROOT", value_name = "DIR")]
    pub share_root: Option<PathBuf>,
    /// Override require_mount
    #[arg(long, global = true, env = "SHARELINK_REQUIRE_MOUNT", value_name = "BOOL", value_parser = parse_bool)]
    pub require_mount: Option<bool>,
    /// Copies in flight during a migration [default: migration.parallelism, else chosen from the share's filesystem]
    #[arg(long, global = true, env = "SHARELINK_PARALLELISM", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=crate::config::MAX_PARALLELISM as i64))]
    pub parallelism: Option<u16>,
    /// Log format
    #[arg(
        long,
        global = true,
        env = "SHARELINK_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (repeat for less)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Link every entry, then run COMMAND as its init
    Run(RunArgs),
    /// Link every entry and exit (safe to re-run by hand)
    Link {
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// One line per link with its state; exit 0 only if all are healthy
    Status {
        /// One JSON document for machines
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and exit 0 or 78
    Check,
    /// What the share can and cannot do, measured, with the fix for each
    /// problem; writes only its own probe entries under .sharelink/
    Doctor {
        /// One JSON document for machines
        #[arg(long)]
        json: bool,
        /// Check this user's access [default: run.user]: NAME, UID, NAME:GROUP or UID:GID
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Drop to this user after linking: NAME, UID, NAME:GROUP or UID:GID
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// How long leftovers get between SIGTERM and SIGKILL [default: run.grace_period or 3s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub grace_period: Option<Duration>,
    /// Forward signals to the command's whole process group
    #[arg(long)]
    pub kill_process_group: bool,
    /// Forward signal FROM to the command as TO; TO = 0 drops it (repeatable; names or numbers: TERM:INT, 15:2)
    #[arg(long, value_name = "FROM:TO", value_parser = parse_rewrite)]
    pub rewrite: Vec<(i32, i32)>,
    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn parse_rewrite(s: &str) -> std::result::Result<(i32, i32), String> {
    crate::signals::Rewrites::parse_rule(s)
}

fn parse_duration_arg(s: &str) -> std::result::Result<Duration, String> {
    config::parse_duration(s)
}

/// Parse the command line, run the command, return the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::Ok
                }
                _ => ExitCode::Usage,
            };
        }
    };
    logging::init(cli.log_format, cli.verbose as i8 - cli.quiet as i8);
    match dispatch(&cli) {
        Ok(code) => code,
        Err(err) => {
            // The library's typed error decides the exit code; the context
            // around it only explains.
            let typed = err.chain().find_map(|c| c.downcast_ref::<Error>());
            match typed {
                Some(Error::Reported(_)) => {}
                Some(e) if e.is_interrupted() => {
                    crate::warn!("{err:#}; stopped at a safe point, the next run finishes the work")
                }
                _ => crate::error!("{err:#}"),
            }
            typed.map_or(ExitCode::Io, Error::exit_code)
        }
    }
}

fn load(cli: &Cli) -> Result<Config> {
    let path = config::locate(cli.config.as_deref());
    config::load(
        &path,
        &Overrides {
            app_root: cli.app_root.clone(),
            share_root: cli.share_root.clone(),
            require_mount: cli.require_mount,
            parallelism: cli.parallelism.map(usize::from),
        },
    )
}

/// Write a report to stdout. A reader that went away (`status | head`) is
/// an error with a cause, not a panic.
fn out(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(text)
        .and_then(|_| stdout.flush())
        .context("cannot write to standard output")
}

fn dispatch(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Check => {
            let cfg = load(cli)?;
            // `run` and `link` refuse a user the image does not have (78):
            // so does the check that gates a deploy.
            if let Some(u) = &cfg.run.user {
                user::resolve(u)?;
            }
            out(format_args!(
                "{}: ok, {} link{}\n",
                cfg.origin.display(),
                cfg.links.len(),
                if cfg.links.len() == 1 { "" } else { "s" }
            ))?;
            Ok(ExitCode::Ok)
        }
        Command::Status { json } => {
            let cfg = load(cli)?;
            let report = status::status(&cfg);
            if *json {
                out(format_args!("{}\n", report.to_json()))?;
            } else {
                out(format_args!("{}", report.to_text()))?;
            }
            Ok(if report.healthy() {
                ExitCode::Ok
            } else {
                ExitCode::Unhealthy
            })
        }
        Command::Doctor { json, user } => {
            let cfg = load(cli)?;
            let spec = user.as_deref().or(cfg.run.user.as_deref());
            let (report, code) = crate::doctor::doctor(&cfg, spec)?;
            if *json {
                out(format_args!("{}\n", report.to_json()))?;
            } else {
                out(format_args!("{}", report.to_text()))?;
            }
            Ok(code)
        }
        Command::Link { dry_run } => {
            let cfg = load(cli)?;
            if *dry_run {
                mounts::check_share(&cfg, false)?;
                let plan = plan::plan(&cfg);
                out(format_args!("{plan}"))?;
                // Exit as `link` would, so a dry run can gate a deploy.
                return Ok(plan.exit_code());
            }
            // Directories made by hand must still be writable by the
            // pipeline's user.
            let owner = cfg.run.user.as_deref().map(user::resolve).transpose()?;
            link::link_all(&cfg, owner.as_ref().map(owner_of))?;
            Ok(ExitCode::Ok)
        }
        Command::Run(args) => {
            let cfg = load(cli)?;
            let user_spec = args.user.as_ref().or(cfg.run.user.as_ref());
            // Resolve the user before touching anything: a typo must not
            // leave a half-set-up container behind.
            let credentials = user_spec
                .map(|u| user::resolve(u))
                .transpose()
                .context("the user to run the command as")?;
            link::link_all(&cfg, credentials.as_ref().map(owner_of))?;
            // A signal that came after the last safe point of linking still
            // means "do not start".
            crate::signals::check_interrupt()?;
            // Command-line rules replace the config's for the same signal.
            let mut rewrite = cfg.run.rewrite.clone();
            for &(from, to) in &args.rewrite {
                rewrite.insert(from, to);
            }
            let opts = init::RunOptions {
                command: args.command.clone(),
                credentials,
                grace_period: args.grace_period.unwrap_or(cfg.run.grace_period),
                kill_process_group: args.kill_process_group || cfg.run.kill_process_group,
                rewrite,
            };
            Ok(init::run(opts))
        }
    }
}

/// Share directories that linking creates go to the pipeline's user.
fn owner_of(c: &user::Credentials) -> Owner {
    Owner {
        uid: c.uid,
        gid: c.gid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_rest_verbatim() {
        let c = Cli::try_parse_from(["sharelink", "run", "--", "python", "-u", "x.py", "--flag"])
            .unwrap();
        match c.command {
            Command::Run(r) => assert_eq!(r.command, ["python", "-u", "x.py", "--flag"]),
            _ => panic!(),
        }
        let c = Cli::try_parse_from([
            "sharelink",
            "run",
            "--grace-period",
            "500ms",
            "sh",
            "-c",
            "x",
        ])
        .unwrap();
        match c.command {
            Command::Run(r) => {
                assert_eq!(r.grace_period, Some(Duration::from_millis(500)));
                assert_eq!(r.command, ["sh", "-c", "x"]);
            }
            _ => panic!(),
        }
    }

    #[test]
    fn rewrite_is_repeatable() {
        let c = Cli::try_parse_from([
            "sharelink",
            "run",
            "--rewrite",
            "TERM:INT",
            "--rewrite",
            "1:0",
            "--",
            "x",
        ])
        .unwrap();
        match c.command {
            Command::Run(r) => assert_eq!(
                r.rewrite,
                [(libc::SIGTERM, libc::SIGINT), (libc::SIGHUP, 0)]
            ),
            _ => panic!(),
        }
        let e =
            Cli::try_parse_from(["sharelink", "run", "--rewrite", "TERM:NOPE", "x"]).unwrap_err();
        assert!(e.to_string().contains("NOPE"), "{e}");
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("maybe").is_err());
    }
}
