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

// Only main.rs and the integration tests use this library, so nearly
// everything is crate-private; the docs are read with
// --document-private-items, where links to crate-private items resolve.
#![allow(rustdoc::private_intra_doc_links)]
// Functions stay under 80 lines (clippy.toml); CI denies warnings.
#![warn(clippy::too_many_lines)]

pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod doctor;
pub mod error;
pub mod exit_code;
pub mod failpoint;
pub(crate) mod fs;
pub(crate) mod init;
pub(crate) mod link;
pub(crate) mod logging;
pub mod signals;

/// The owner file a lock held by a process of this host has (the
/// integration tests write a live holder's lock with it).
pub use link::lock::owner_file_of;

/// docs/design.md's source map (the tree under "Architecture") against the
/// files under `src/`.
#[cfg(test)]
mod source_map {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The `.rs` paths the map names, `src/`-relative.
    fn mapped() -> BTreeSet<String> {
        let doc = include_str!("../docs/design.md");
        let arch = &doc[doc
            .find("## Architecture")
            .expect("an Architecture section")..];
        let block = arch.split("```").nth(1).expect("the source map block");
        let mut dirs: Vec<(usize, String)> = Vec::new();
        let mut out = BTreeSet::new();
        for line in block.lines() {
            let indent = line.len() - line.trim_start().len();
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            while dirs.last().is_some_and(|(i, _)| *i >= indent) {
                dirs.pop();
            }
            let base = dirs.last().map(|(_, d)| d.clone()).unwrap_or_default();
            let full = if indent == 0 {
                name.to_string()
            } else {
                format!("{base}{name}")
            };
            let Some(rel) = full.strip_prefix("src/") else {
                continue;
            };
            if name.ends_with('/') {
                dirs.push((indent, full.clone()));
            } else if rel.ends_with(".rs") {
                out.insert(rel.to_string());
            }
        }
        out
    }

    fn on_disk(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if e.file_type().unwrap().is_dir() {
                on_disk(&e.path(), &format!("{rel}{name}/"), out);
            } else if name.ends_with(".rs") {
                out.insert(format!("{rel}{name}"));
            }
        }
    }

    /// Every source file is in the map, except a directory's `mod.rs` (the
    /// directory's line speaks for it), `lib.rs` and unit-test files
    /// (`tests.rs`, `*_tests.rs`); every file the map names exists.
    #[test]
    fn design_maps_the_tree() {
        let mut files = BTreeSet::new();
        on_disk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            "",
            &mut files,
        );
        let map = mapped();
        let missing: Vec<&String> = files
            .iter()
            .filter(|f| {
                !map.contains(*f)
                    && !f.ends_with("mod.rs")
                    && *f != "lib.rs"
                    && !f.ends_with("tests.rs")
            })
            .collect();
        assert!(
            missing.is_empty(),
            "not in design.md's source map: {missing:?}"
        );
        let stale: Vec<&String> = map.iter().filter(|f| !files.contains(*f)).collect();
        assert!(
            stale.is_empty(),
            "in design.md's source map, not in src/: {stale:?}"
        );
    }

    /// A file longer than this has more than one reason to change: split
    /// it (functions have their own limit, in clippy.toml).
    const MAX_FILE_LINES: usize = 700;

    #[test]
    fn no_source_file_over_700_lines() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = BTreeSet::new();
        on_disk(&src, "", &mut files);
        let long: Vec<(String, usize)> = files
            .into_iter()
            .map(|f| {
                let n = std::fs::read_to_string(src.join(&f))
                    .unwrap()
                    .lines()
                    .count();
                (f, n)
            })
            .filter(|(_, n)| *n > MAX_FILE_LINES)
            .collect();
        assert!(long.is_empty(), "over {MAX_FILE_LINES} lines: {long:?}");
    }
}
