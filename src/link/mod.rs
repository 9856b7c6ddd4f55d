//! The linking half: make every data directory a symlink into the share,
//! moving baked data in first.
//!
//! [`plan`] observes and decides (pure), [`status`] reports the plan,
//! [`apply`] carries it out, [`migrate`] moves data crash-safely under a
//! [`lock`], [`mounts`] guards against a share that is not mounted and
//! against volumes inside data directories.

pub mod apply;
pub mod lock;
pub mod migrate;
pub mod mounts;
pub mod plan;
pub mod status;

use crate::config::Config;
use crate::error::Result;

pub use apply::Owner;

/// The mount guard, then plan and apply every link.
pub fn link_all(cfg: &Config, owner: Option<Owner>) -> Result<()> {
    mounts::check_share(cfg, true)?;
    apply::apply(cfg, owner)
}
