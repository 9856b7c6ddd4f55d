//! The command line and the dispatch of each command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use std::io::Write as _;

use anyhow::Context as _;

use crate::config::{self, Config, Keep, MigrateMode, Overrides};
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
struct Cli {
    /// Config file [default: $SHARELINK_CONFIG or /etc/sharelink/sharelink.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// Override app_root
    #[arg(long, global = true, env = "SHARELINK_APP_ROOT", value_name = "DIR")]
    pub(crate) app_root: Option<PathBuf>,
    /// Override share_root
    #[arg(long, global = true, env = "SHARELINK_SHARE_ROOT", value_name = "DIR")]
    pub(crate) share_root: Option<PathBuf>,
    /// Override require_mount
    #[arg(long, global = true, env = "SHARELINK_REQUIRE_MOUNT", value_name = "BOOL", value_parser = parse_bool)]
    pub(crate) require_mount: Option<bool>,
    /// Copies in flight during a migration [default: migration.parallelism, else chosen from the share's filesystem]
    #[arg(long, global = true, env = "SHARELINK_PARALLELISM", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=crate::config::MAX_PARALLELISM as i64))]
    pub(crate) parallelism: Option<u16>,
    /// Log format
    #[arg(
        long,
        global = true,
        env = "SHARELINK_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Less log output (repeat for less)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) quiet: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// Internal: keeps the leases of files being deleted if sharelink dies
    /// (started by sharelink itself, see link::migrate::guardian)
    #[command(name = link::migrate::guardian::SUBCOMMAND, hide = true)]
    Guardian,
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Drop to this user after linking: NAME, UID, NAME:GROUP or UID:GID
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// How long leftovers get between SIGTERM and SIGKILL [default: run.grace_period or 3s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub(crate) grace_period: Option<Duration>,
    /// Forward signals to the command's whole process group
    #[arg(long)]
    pub(crate) kill_process_group: bool,
    /// Forward signal FROM to the command as TO; TO = 0 drops it; TO-if-uncaught only when the command leaves FROM at its default action (repeatable; names or numbers: TERM:INT, 15:2, TERM:INT-if-uncaught)
    #[arg(long, value_name = "FROM:TO", value_parser = parse_rewrite)]
    pub(crate) rewrite: Vec<(i32, crate::signals::Target)>,
    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub(crate) command: Vec<OsString>,
}

fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn parse_rewrite(s: &str) -> std::result::Result<(i32, crate::signals::Target), String> {
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
        Command::Guardian => Ok(link::migrate::guardian::serve()),
        Command::Check => check(cli),
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
        Command::Link { dry_run } => link_command(cli, *dry_run),
        Command::Run(args) => run_command(cli, args),
    }
}

/// `check`: the config is valid, and what a rollout will do to data
/// already on the share.
fn check(cli: &Cli) -> anyhow::Result<ExitCode> {
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
    // What a rollout will do to data already on the share.
    for l in &cfg.links {
        if l.migrate == MigrateMode::IfEmpty && l.keep.is_none() {
            continue;
        }
        let keep = match l.keep {
            None => "set-aside copies kept forever".to_string(),
            Some(k @ Keep::Count(_)) => {
                format!("keep the {k} most recent set-aside copies")
            }
            Some(k @ Keep::Age(_)) => format!("keep set-aside copies for {k}"),
        };
        out(format_args!(
            "  {}: migrate = \"{}\", {keep}\n",
            l.app.display(),
            l.migrate
        ))?;
    }
    Ok(ExitCode::Ok)
}

/// `link` (or `link --dry-run`: the plan printed, exiting as `link` would).
fn link_command(cli: &Cli, dry_run: bool) -> anyhow::Result<ExitCode> {
    let cfg = load(cli)?;
    if dry_run {
        mounts::check_share(&cfg, false)?;
        let plan = plan::plan(&cfg);
        out(format_args!("{plan}"))?;
        for l in &plan.links {
            if let Some(text) = image_wins_preview(l, &cfg.share_root) {
                out(format_args!("{text}"))?;
            }
        }
        // Exit as `link` would, so a dry run can gate a deploy.
        return Ok(plan.exit_code());
    }
    // Directories made by hand must still be writable by the
    // pipeline's user.
    let owner = cfg.run.user.as_deref().map(user::resolve).transpose()?;
    link::link_all(&cfg, owner.as_ref().map(owner_of))?;
    Ok(ExitCode::Ok)
}

/// `run`: link, then hand the command to the init.
fn run_command(cli: &Cli, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = load(cli)?;
    let user_spec = args.user.as_ref().or(cfg.run.user.as_ref());
    // Resolve the user before touching anything: a typo must not
    // leave a half-set-up container behind.
    let credentials = user_spec
        .map(|u| user::resolve(u))
        .transpose()
        .context("the user to run the command as")?;
    if let Some(code) = command_missing(&cfg, &args.command, credentials.as_ref()) {
        return Ok(code);
    }
    link::link_all(&cfg, credentials.as_ref().map(owner_of))?;
    warn_unwritable(&cfg, credentials.as_ref());
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

/// For a dry run: which entries an `image-wins` migration of this link
/// would replace, copy in and set aside (read-only).
fn image_wins_preview(l: &plan::LinkPlan<'_>, share_root: &std::path::Path) -> Option<String> {
    use plan::{Action, Decision, MigrationPlan};
    let Ok(Decision::Proceed { actions, .. }) = &l.decision else {
        return None;
    };
    if !actions.contains(&Action::Migrate(MigrationPlan::Compare(
        MigrateMode::ImageWins,
    ))) {
        return None;
    }
    let head = format!("{} -> {}", l.paths.app.display(), l.paths.share.display());
    let p = match link::migrate::preview::preview(&l.paths.app, share_root, &l.link.share) {
        Ok(p) => p,
        Err(e) => return Some(format!("{head}: cannot preview the migration: {e}\n")),
    };
    let list = |v: &[PathBuf]| {
        let shown: Vec<String> = v.iter().take(10).map(|p| p.display().to_string()).collect();
        let more = v.len().saturating_sub(shown.len());
        format!(
            "{}{}",
            shown.join(", "),
            if more > 0 {
                format!(", and {more} more")
            } else {
                String::new()
            }
        )
    };
    let mut s = format!(
        "{head}: image-wins would replace {} share entr{}",
        p.replace.len(),
        if p.replace.len() == 1 { "y" } else { "ies" }
    );
    if !p.replace.is_empty() {
        s.push_str(&format!(
            " (their current versions set aside first): {}",
            list(&p.replace)
        ));
    }
    s.push('\n');
    if !p.copy_in.is_empty() {
        s.push_str(&format!(
            "  copy in {}: {}\n",
            p.copy_in.len(),
            list(&p.copy_in)
        ));
    }
    if !p.set_aside.is_empty() {
        s.push_str(&format!(
            "  set aside {} app entr{} where the share has a directory: {}\n",
            p.set_aside.len(),
            if p.set_aside.len() == 1 { "y" } else { "ies" },
            list(&p.set_aside)
        ));
    }
    if p.identical > 0 {
        s.push_str(&format!(
            "  {} already identical on the share\n",
            p.identical
        ));
    }
    Some(s)
}

/// 127 when the command is nowhere its user could find it, checked before
/// linking so that a misspelt command migrates nothing. Looked up as that
/// user (its PATH search, its permissions). A candidate inside a data
/// directory may only appear once linked, so it counts as present.
fn command_missing(
    cfg: &Config,
    command: &[OsString],
    user: Option<&user::Credentials>,
) -> Option<ExitCode> {
    use std::os::unix::ffi::OsStrExt as _;
    let program = command.first()?;
    if program.is_empty() {
        return None; // spawn says why
    }
    let candidates = init::command_candidates(program);
    let data_dirs: Vec<PathBuf> = cfg
        .links
        .iter()
        .map(|l| cfg.app_root.join(&l.app))
        .collect();
    let abs = |p: &PathBuf| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or(p.clone())
    };
    if candidates
        .iter()
        .any(|c| data_dirs.iter().any(|d| abs(c).starts_with(d)))
    {
        return None;
    }
    let checks: Vec<(&std::path::Path, i32)> = candidates
        .iter()
        .map(|c| (c.as_path(), libc::F_OK))
        .collect();
    let errs = init::probe::access_as(user, &checks).ok()?;
    // Only "nothing there at all" is decided here; anything else (a file
    // that is not executable, a directory the user cannot search) is left
    // to exec, which reports it as before.
    // A PATH entry the user cannot search (/root/.cargo/bin) hides
    // nothing when the file is not there for sharelink either.
    let missing = |(c, &e): (&PathBuf, &i32)| {
        e == libc::ENOENT
            || e == libc::ENOTDIR
            || (e == libc::EACCES && std::fs::symlink_metadata(c).is_err())
    };
    if candidates.iter().zip(&errs).all(missing) {
        let name = program.to_string_lossy();
        if candidates.len() == 1 && program.as_bytes().contains(&b'/') {
            crate::error!("cannot run {name:?}: not found; nothing was linked or moved");
        } else {
            crate::error!(
                "cannot run {name:?}: command not found in PATH ({}); nothing was linked or moved",
                std::env::var("PATH").unwrap_or_default()
            );
        }
        return Some(ExitCode::NotFound);
    }
    None
}

/// Warn, before the command starts, about each data directory its user
/// cannot write: migrated data keeps the image's owners, so a baked
/// directory owned by root is root's on the share too, and the pipeline
/// would die with EACCES at its first write.
fn warn_unwritable(cfg: &Config, user: Option<&user::Credentials>) {
    let Some(user) = user else { return };
    // First the share itself: a share_root the user cannot enter (a 0700
    // mount owned by root) is one cause for every link, said once.
    let mut paths: Vec<PathBuf> = vec![cfg.share_root.clone()];
    for l in &cfg.links {
        let target = cfg.share_root.join(&l.share);
        paths.push(target.clone());
        paths.extend(l.dirs.iter().map(|d| target.join(d)));
    }
    let checks: Vec<(&std::path::Path, i32)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p.as_path(),
                if i == 0 {
                    libc::X_OK
                } else {
                    libc::W_OK | libc::X_OK
                },
            )
        })
        .collect();
    let errs = match init::probe::access_as(Some(user), &checks) {
        Ok(e) => e,
        Err(why) => {
            crate::debug!("could not check what {user} can write: {why}");
            return;
        }
    };
    // Owners are read through handles opened beneath the share root,
    // never by following a path a co-tenant of the share may have swapped.
    let root = crate::fs::dir::Dir::open(&cfg.share_root).ok();
    let owner = |p: &std::path::Path| {
        let Some(root) = root.as_ref() else {
            return String::new();
        };
        let meta = match p.strip_prefix(&cfg.share_root) {
            Ok(rel) if rel.as_os_str().is_empty() => root.stat(),
            Ok(rel) => crate::fs::tree::open_beneath(root, rel).and_then(|d| d.stat()),
            Err(_) => return String::new(),
        };
        meta.map(|m| {
            format!(
                ", owned by uid {}, gid {}, mode {:04o}",
                m.uid, m.gid, m.perm
            )
        })
        .unwrap_or_default()
    };
    let (uid, gid) = (user.uid, user.gid);
    if errs[0] != 0 {
        crate::warn!(
            "the command's user {user} cannot enter the share at {}{}: {}. Every read and write of \
             its data will fail. Fix: make the share's root searchable by that user (chmod 0755 \
             or chown {uid}:{gid} it on its host; for an SMB share, mount it with \
             uid={uid},gid={gid} or dir_mode=0755)",
            cfg.share_root.display(),
            owner(&cfg.share_root),
            nix::errno::Errno::from_raw(errs[0]).desc(),
        );
        return;
    }
    for (p, &errno) in paths.iter().zip(&errs).skip(1) {
        if errno == 0 || errno == libc::ENOENT {
            continue;
        }
        crate::warn!(
            "the command's user {user} cannot write {}{}: {}. Its writes there will fail. \
             Fix: chown the baked data directory to that user in the Dockerfile (`COPY --chown=` or \
             `RUN chown -R {uid}:{gid} /app/...`; migrated data keeps the image's owners), or chown it \
             on the share; for an SMB share, mount it with uid={uid},gid={gid}",
            p.display(),
            owner(p),
            nix::errno::Errno::from_raw(errno).desc(),
        );
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
    use crate::signals::Target;
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
                [
                    (libc::SIGTERM, Target::always(libc::SIGINT)),
                    (libc::SIGHUP, Target::always(0))
                ]
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
