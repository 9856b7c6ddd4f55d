//! placeholder
use crate::config::Config;
use crate::error::Result;
pub fn check_share(_cfg: &Config, _wait: bool) -> Result<()> { Ok(()) }
