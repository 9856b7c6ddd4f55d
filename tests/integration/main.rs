//! The integration tests: one crate, one module per subject.

/// The path of test `$name` in this crate as libtest names it
/// (`module::name`), prefixed with the crate's name (stripped where used).
macro_rules! test_path {
    ($name:literal) => {
        concat!(module_path!(), "::", $name)
    };
}

/// `if !in_private_mount_ns!("this_test") { return; }` at the top of a
/// test that mounts: see [`common::in_private_mount_ns`].
macro_rules! in_private_mount_ns {
    ($name:literal) => {
        $crate::common::in_private_mount_ns(test_path!($name))
    };
}

mod common;
mod rel_support;
mod script_support;

mod compose_files;
mod config_property;
mod crash;
mod crash_random_kill;
mod deploy_manifests;
mod docker_multinode;
mod docker_smoke;
mod hostile_input;
mod latency_rig;
mod link;
mod migrate_faults;
mod migrate_fidelity;
mod migrate_property;
mod migrate_writers;
mod pid1;
mod release_artifacts;
mod replicas;
mod share_faults;
mod signal_storm;
