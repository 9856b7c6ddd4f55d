//! `--user` resolution from the container's /etc/passwd and /etc/group. (placeholder: being written)
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

pub fn resolve(_spec: &str) -> Result<Credentials> {
    unimplemented!("user")
}
