//! sharelink: link a container's data directories into a mounted file share,
//! crash-safely, then run the pipeline as PID 1.
//!
//! Two halves, which never import each other:
//! - [`link`]: *plan, then apply*. [`link::plan`] looks at the filesystem
//!   and decides per link (pure decisions, tested without disks),
//!   [`link::apply`] carries the plan out, [`link::migrate`] moves baked
//!   data into the share without ever losing any, under a [`link::lock`].
//! - [`init`]: the PID 1 that runs the pipeline afterwards.
//!
//! Beneath both: [`config`], [`fs`] (filesystem operations relative to open
//! directories), [`signals`], [`mod@error`] and [`exit_code`]. [`cli`] ties
//! them together.

pub mod cli;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod error;
pub mod exit_code;
pub mod failpoint;
pub mod fs;
pub mod init;
pub mod link;
pub mod logging;
pub mod signals;
