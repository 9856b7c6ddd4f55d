//! The Kubernetes and Azure Container Apps manifests under `deploy/`,
//! validated offline (`tests/deploy/validate.sh`): Kubernetes schemas
//! (kubernetes-validate --strict, after `kubectl kustomize` where kubectl
//! exists), the Container Apps schema in `deploy/azure-container-apps/schema`,
//! and what the manifests must say (mount options, probes, exit codes).
//!
//! Needs the Python tools `.ci/install-deps` installs; without them it is
//! skipped loudly, except with `CI=true`.

use crate::support::scripts;

use std::time::Duration;

#[test]
fn deploy_manifests_validate() {
    scripts::run(
        "deploy_manifests_validate",
        "deploy",
        "tests/deploy/validate.sh",
        Duration::from_secs(10 * 60),
    );
}
