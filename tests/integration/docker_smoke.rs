//! Runs the container smoke test `tests/docker/smoke.sh` (the real Dockerfile
//! and docker-compose.yml on this machine's Docker engine).
//!
//! - No usable Docker (engine or docker-compose missing) and `CI` is not
//!   `true`: skipped, loudly.
//! - `CI=true`: always runs; a missing Docker is a failure.
//! - `SHARELINK_SKIP_DOCKER_SMOKE=1` skips it outside CI (it builds a release
//!   binary and an image: a minute or two).
//!
//! The script's output is streamed to stderr as it runs (so a CI log shows
//! progress) and its FAIL lines are repeated in the panic message.

use crate::support::{self, scripts};

use std::time::Duration;

/// The script bounds every step itself; this is the backstop.
const DEADLINE: Duration = Duration::from_secs(45 * 60);

#[test]
fn docker_compose_smoke() {
    let how = "bash tests/docker/smoke.sh";
    if !support::in_ci() && std::env::var("SHARELINK_SKIP_DOCKER_SMOKE").is_ok_and(|v| v == "1") {
        support::skip_or_fail("docker_smoke", "SHARELINK_SKIP_DOCKER_SMOKE=1", how);
        return;
    }
    if let Some(why) = scripts::docker_unusable() {
        support::skip_or_fail(
            "docker_smoke",
            &format!("Docker is not usable here: {why}"),
            how,
        );
        return;
    }
    scripts::run(
        "container smoke test",
        "docker-smoke",
        "tests/docker/smoke.sh",
        DEADLINE,
    );
}
