//! placeholder
use crate::config::Config;
use crate::error::Result;
pub struct Report;
impl Report { pub fn to_json(&self) -> String { String::new() } pub fn to_text(&self) -> String { String::new() } pub fn healthy(&self) -> bool { true } }
pub fn status(_cfg: &Config) -> Report { Report }
pub struct Plan;
impl std::fmt::Display for Plan { fn fmt(&self, _f: &mut std::fmt::Formatter) -> std::fmt::Result { Ok(()) } }
pub fn plan(_cfg: &Config) -> Result<Plan> { Ok(Plan) }
