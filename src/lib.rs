//! sharelink: link a container's data directories into a mounted file share,
//! crash-safely, then run the pipeline as PID 1.
//!
//! The flow is *plan, then apply*: [`config`] reads and validates the TOML
//! map, [`plan`] looks at the filesystem and decides per link what to do
//! (pure decisions, tested without disks), [`apply`] carries the plan out,
//! with [`migrate`] doing the crash-safe moves of baked data under a
//! [`lock`]. [`supervisor`] is the init that runs the pipeline afterwards.

pub mod apply;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod fs;
pub mod lock;
pub mod logging;
pub mod migrate;
pub mod mounts;
pub mod plan;
pub mod signals;
pub mod supervisor;
pub mod user;
