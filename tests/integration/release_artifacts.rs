//! The release as users get it (`tests/release/check.sh`): both static
//! binaries, both wheels and SHA256SUMS from `scripts/release.sh`; the wheel
//! installed with pip into a fresh virtualenv and used from there; the
//! aarch64 binary's functional suite under qemu-user.
//!
//! Needs maturin (in `$SHARELINK_PYTOOLS` or on PATH), qemu-aarch64-static
//! and the two musl rustup targets, all installed by `.ci/install-deps`;
//! without them it is skipped loudly, except with `CI=true`.

use crate::support::scripts;

use std::time::Duration;

#[test]
fn release_wheels_and_cross_binaries() {
    scripts::run(
        "release_wheels_and_cross_binaries",
        "release",
        "tests/release/check.sh",
        Duration::from_secs(40 * 60),
    );
}
