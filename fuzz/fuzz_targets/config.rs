//! Coverage-guided fuzzing of config parsing and validation:
//! `cargo +nightly fuzz run config fuzz/seeds/config` (see docs/reliability.md).
//! CI runs its proptest twin (the config-fuzzing integration tests).
//!
//! Properties: `parse` never panics; every rejection is exit 78 and names
//! the config; every accepted config has absolute roots, clean relative
//! link paths, no `.sharelink` share paths and no overlaps.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use sharelink::config::{self, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = config::parse_duration(text);
    match config::parse(text, Path::new("fuzz.toml"), &Overrides::default()) {
        Err(e) => {
            assert_eq!(e.exit_code().code(), 78, "{e}");
            assert!(e.to_string().contains("fuzz.toml"), "{e}");
        }
        Ok(cfg) => {
            let clean_rel = |p: &Path| {
                !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
            };
            assert!(cfg.app_root.is_absolute() && cfg.share_root.is_absolute());
            for (i, l) in cfg.links.iter().enumerate() {
                assert!(clean_rel(&l.app) && clean_rel(&l.share), "{l:?}");
                assert!(l.dirs.iter().all(|d| clean_rel(d)), "{l:?}");
                assert!(!l.share.starts_with(".sharelink"), "{l:?}");
                let (a, s) = (cfg.app_path(l), cfg.share_path(l));
                assert!(!a.starts_with(&s) && !s.starts_with(&a), "{l:?}");
                for m in &cfg.links[i + 1..] {
                    assert!(!l.app.starts_with(&m.app) && !m.app.starts_with(&l.app), "{l:?} {m:?}");
                    assert!(!l.share.starts_with(&m.share) && !m.share.starts_with(&l.share), "{l:?} {m:?}");
                }
            }
        }
    }
});
