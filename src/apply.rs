//! placeholder
use crate::config::Config;
use crate::error::Result;
pub fn apply(_cfg: &Config) -> Result<()> { Ok(()) }
