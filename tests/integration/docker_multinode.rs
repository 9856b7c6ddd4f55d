//! The Kubernetes Deployment's scale-out, simulated on this machine's Docker
//! engine (`tests/docker/multinode.sh`): nodes on separate networks with
//! their own host names, one shared share, the pod spec taken from
//! `deploy/kubernetes/service/deployment.yaml`, lock holders killed mid-migration,
//! restarts, rescheduling and a rolling update; then the share must hold
//! exactly the baked data and every node must be linked.
//!
//! - No usable Docker and `CI` is not `true`: skipped, loudly.
//! - `CI=true`: always runs; a missing Docker is a failure.
//! - `SHARELINK_SKIP_DOCKER_MULTINODE=1` skips it outside CI (about three
//!   minutes).

use crate::support::{self, scripts};

use std::time::Duration;

/// The script bounds every step itself; this is the backstop.
const DEADLINE: Duration = Duration::from_secs(30 * 60);

#[test]
fn deployment_scale_out_on_separate_nodes() {
    let test = "docker_multinode";
    let how = "bash tests/docker/multinode.sh";
    if !support::in_ci() && std::env::var("SHARELINK_SKIP_DOCKER_MULTINODE").is_ok_and(|v| v == "1")
    {
        support::skip_or_fail(test, "SHARELINK_SKIP_DOCKER_MULTINODE=1", how);
        return;
    }
    if let Some(why) = scripts::docker_unusable() {
        support::skip_or_fail(test, &format!("Docker is not usable here: {why}"), how);
        return;
    }
    scripts::run(test, "multinode", "tests/docker/multinode.sh", DEADLINE);
}
