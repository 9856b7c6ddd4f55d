//! The config file's schema as serde reads it, before validation: every
//! table and key the file may hold (unknown keys are refused, named), and
//! the hand-written readers for values with two forms (`keep`, signals,
//! links).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::{parse_duration, Keep, MigrateMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) app_root: Option<Spanned<String>>,
    pub(super) share_root: Option<Spanned<String>>,
    pub(super) require_mount: Option<bool>,
    pub(super) allow_local_volume: Option<bool>,
    pub(super) mount_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) links: BTreeMap<Spanned<String>, Spanned<RawLink>>,
    #[serde(default)]
    pub(super) run: RawRun,
    #[serde(default)]
    pub(super) migration: RawMigration,
    #[serde(default)]
    pub(super) displaced: RawDisplaced,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisplaced {
    pub(super) keep: Option<Spanned<RawKeep>>,
}

/// `keep`: a count (`5`) or an age (`"30d"`).
pub(super) enum RawKeep {
    Age(String),
    Count(i64),
}

impl<'de> Deserialize<'de> for RawKeep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawKeep;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a count of set-aside copies like 5, or an age like \"30d\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKeep, E> {
                Ok(RawKeep::Age(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKeep, E> {
                Ok(RawKeep::Count(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A validated `keep`: zero would delete the copy just set aside.
pub(super) fn keep(raw: &RawKeep) -> Result<Keep, String> {
    match raw {
        RawKeep::Count(n) if (1..=i64::from(u32::MAX)).contains(n) => Ok(Keep::Count(*n as u32)),
        RawKeep::Count(n) => Err(format!(
            "must keep at least 1 set-aside copy, got {n} (to keep by age, write an age like \"30d\")"
        )),
        RawKeep::Age(s) => match parse_duration(s)? {
            d if d.is_zero() => Err(format!(
                "an age of {s:?} would delete every set-aside copy; use an age like \"30d\" or a count like 5"
            )),
            d => Ok(Keep::Age(d)),
        },
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigration {
    pub(super) parallelism: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRun {
    pub(super) user: Option<Spanned<String>>,
    pub(super) grace_period: Option<Spanned<String>>,
    pub(super) kill_process_group: Option<bool>,
    pub(super) rewrite: Option<BTreeMap<Spanned<String>, Spanned<RawSignal>>>,
}

/// A signal in the config: a name (`"INT"`) or a number (`2`, `0`).
pub(super) enum RawSignal {
    Name(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSignal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name like \"INT\" or a number (0 drops the signal)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSignal, E> {
                Ok(RawSignal::Name(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSignal, E> {
                Ok(RawSignal::Number(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLinkTable {
    pub(super) share: String,
    #[serde(default)]
    pub(super) dirs: Vec<String>,
    #[serde(default = "default_migrate")]
    pub(super) migrate: MigrateMode,
    // Not `Spanned`: inside a link table the span would not survive the
    // map visitor; errors name the link's line instead.
    pub(super) keep: Option<RawKeep>,
}

fn default_migrate() -> MigrateMode {
    MigrateMode::IfEmpty
}

/// `"app" = "share"` or `"app" = { share = …, dirs = […], migrate = … }`.
/// A hand-written visitor rather than `#[serde(untagged)]` so that a typo in
/// the table form reports the unknown key instead of "did not match any
/// variant".
pub(super) struct RawLink(pub(super) RawLinkTable);

impl<'de> Deserialize<'de> for RawLink {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawLink;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a share path string or a table { share = \"…\", dirs = […], migrate = \"if-empty\"|\"merge\"|\"image-wins\", keep = 5|\"30d\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLink, E> {
                Ok(RawLink(RawLinkTable {
                    share: v.to_string(),
                    dirs: Vec::new(),
                    migrate: MigrateMode::IfEmpty,
                    keep: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawLink, A::Error> {
                RawLinkTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawLink)
            }
        }
        d.deserialize_any(V)
    }
}
