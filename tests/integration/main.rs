//! The integration tests: one crate, one module per subject, helpers in
//! [`support`]. Run with `cargo test --features failpoints` (as root, with
//! Docker, for all of them: see `support` for what skips and when).

#[macro_use]
mod support;

mod compose_files;
mod config;
mod config_property;
mod crash;
mod crash_random_kill;
mod deploy_manifests;
mod docker_multinode;
mod docker_smoke;
mod doctor;
mod hostile_input;
mod image_wins;
mod interrupted_link;
mod latency_rig;
mod link;
mod migrate_faults;
mod migrate_fidelity;
mod migrate_property;
mod migrate_writers;
mod pid1;
mod release_artifacts;
mod replicas;
mod share_attacks;
mod share_faults;
mod status;
