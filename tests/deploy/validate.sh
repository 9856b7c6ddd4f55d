#!/usr/bin/env bash
# The deploy manifests, validated offline (issue 11):
#   - deploy/kubernetes/{service,batch,migrate}: each overlay rendered by
#     `kubectl kustomize` (where kubectl exists; else the resources of the
#     overlay and its base are concatenated); deploy/kubernetes itself must
#     not render (no kustomization: `apply -k` there deploys nothing); then
#     `kubernetes-validate --strict` against the schemas it ships, for the
#     oldest Kubernetes the manifests need (1.31: podFailurePolicy GA) and the
#     newest it knows
#   - deploy/azure-container-apps: check-jsonschema against
#     deploy/azure-container-apps/schema/ (written for this repository from
#     the Container Apps REST API definitions; no official schema exists)
#   - negative controls: broken copies must be rejected, so a validator that
#     accepts anything cannot pass this
#   - tests/deploy/check_manifests.py: what the manifests must say beyond
#     their schemas (mount options, probes, exit codes, entrypoint, user,
#     the pipeline command against the Dockerfile's CMD, every command,
#     script and probe they name present in the image, fixed image tags,
#     Pod Security labels, one workload per overlay)
#
#   bash tests/deploy/validate.sh
#
# Exit 0: all passed; 1: a failure; 77: the Python tools are missing (run
# .ci/install-deps).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

PYTOOLS="${SHARELINK_PYTOOLS:-/opt/sharelink-pytools}"
tool() { command -v "$1" 2>/dev/null || { [ -x "$PYTOOLS/bin/$1" ] && echo "$PYTOOLS/bin/$1"; } || true; }
KV="$(tool kubernetes-validate)"
CJ="$(tool check-jsonschema)"
PY="$PYTOOLS/bin/python"
[ -n "$KV" ] || { echo "SKIP: kubernetes-validate not found (run .ci/install-deps)"; exit 77; }
[ -n "$CJ" ] || { echo "SKIP: check-jsonschema not found (run .ci/install-deps)"; exit 77; }
"$PY" -c 'import yaml' 2>/dev/null || PY=python3
"$PY" -c 'import yaml' 2>/dev/null || { echo "SKIP: no python with PyYAML (run .ci/install-deps)"; exit 77; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sharelink-deploy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FAILED=()
PASSED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED+=("$*"); echo "FAIL: $*"; }
# expect_ok DESC CMD... / expect_fail DESC CMD...: output shown on surprise.
expect_ok() {
    local d="$1"; shift
    if "$@" >"$WORK/out" 2>&1; then pass "$d"; else sed 's/^/    /' "$WORK/out"; fail "$d"; fi
}
expect_fail() {
    local d="$1"; shift
    if "$@" >"$WORK/out" 2>&1; then sed 's/^/    /' "$WORK/out"; fail "$d"; else pass "$d"; fi
}
K8S="$ROOT/deploy/kubernetes"
ACA="$ROOT/deploy/azure-container-apps"
KVERSIONS=(1.31.0 1.37.0)

# --- Kubernetes ---------------------------------------------------------------
RENDERED="$WORK/rendered.yaml"
OVERLAYS=(service batch migrate)
OVERLAY_ARGS=()
KUBECTL="${KUBECTL-$(command -v kubectl || true)}"
: >"$RENDERED"
for o in "${OVERLAYS[@]}"; do
    out="$WORK/rendered-$o.yaml"
    if [ -n "$KUBECTL" ]; then
        expect_ok "kubectl kustomize deploy/kubernetes/$o renders" timeout 120 "$KUBECTL" kustomize "$K8S/$o" -o "$out"
    else
        echo "NOTE: kubectl not found: concatenating deploy/kubernetes/$o's resources instead of kubectl kustomize"
        "$PY" - "$K8S/$o" >"$out" <<'PY'
import sys, yaml, pathlib
def docs(d):
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    for r in k["resources"]:
        p = (d / r).resolve()
        yield from (docs(p) if p.is_dir() else [p.read_text()])
print("\n---\n".join(docs(pathlib.Path(sys.argv[1]))))
PY
    fi
    { cat "$out"; echo "---"; } >>"$RENDERED"
    OVERLAY_ARGS+=("$o=$out")
done
if [ -n "$KUBECTL" ]; then
    expect_fail "kubectl kustomize deploy/kubernetes (the parent) renders nothing: pick an overlay" \
        timeout 120 "$KUBECTL" kustomize "$K8S"
fi
kinds="$(grep -E '^kind: ' "$RENDERED" | sort | tr '\n' ' ')"
echo "    rendered: $kinds"
for v in "${KVERSIONS[@]}"; do
    expect_ok "kubernetes-validate --strict, Kubernetes $v: every resource" \
        timeout 300 "$KV" --strict --quiet -k "$v" "$RENDERED"
done
# Negative controls: an unknown field; a wrong type; a Deployment without its
# selector. (An unknown podFailurePolicy action passes the schemas, which
# have no enum for it: check_manifests.py checks the actions.)
"$PY" - "$RENDERED" "$WORK" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
out = sys.argv[2]
def write(name, mutate):
    ds = yaml.safe_load_all(open(sys.argv[1]))
    ds = [d for d in ds if d]
    for d in ds:
        mutate(d)
    with open(f"{out}/{name}.yaml", "w") as f:
        yaml.safe_dump_all(ds, f)
def unknown_field(d):
    if d["kind"] == "Deployment":
        d["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = d["spec"]["template"]["spec"]["containers"][0].pop("startupProbe")
def wrong_type(d):
    if d["kind"] == "CronJob":
        d["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "three"
def no_selector(d):
    if d["kind"] == "Deployment":
        del d["spec"]["selector"]
write("neg-unknown-field", unknown_field)
write("neg-wrong-type", wrong_type)
write("neg-no-selector", no_selector)
PY
for neg in unknown-field wrong-type no-selector; do
    expect_fail "negative control: kubernetes-validate rejects a manifest with $neg" \
        timeout 300 "$KV" --strict --quiet -k "${KVERSIONS[-1]}" "$WORK/neg-$neg.yaml"
done

# --- Azure Container Apps ---------------------------------------------------------
SCHEMA="$ACA/schema/container-apps.schema.json"
expect_ok "check-jsonschema: the schema itself is valid (draft 2020-12)" timeout 120 "$CJ" --check-metaschema "$SCHEMA"
for f in app job; do
    expect_ok "check-jsonschema: deploy/azure-container-apps/$f.yaml" timeout 120 "$CJ" --schemafile "$SCHEMA" "$ACA/$f.yaml"
done
sed 's/mountOptions:/mountOption:/' "$ACA/app.yaml" >"$WORK/neg-aca-typo.yaml"
"$PY" - "$ACA/app.yaml" >"$WORK/neg-aca-threshold.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
doc["properties"]["template"]["containers"][0]["probes"] = [
    {"type": "Startup", "tcpSocket": {"port": 8080}, "periodSeconds": 240, "failureThreshold": 11}]
print(yaml.safe_dump(doc))
PY
sed '/storageName:/d' "$ACA/job.yaml" >"$WORK/neg-aca-nostorage.yaml"
sed 's/^    triggerType: Schedule/    triggerType: Cron/' "$ACA/job.yaml" >"$WORK/neg-aca-trigger.yaml"
for neg in typo threshold nostorage trigger; do
    expect_fail "negative control: the Container Apps schema rejects $neg" \
        timeout 120 "$CJ" --schemafile "$SCHEMA" "$WORK/neg-aca-$neg.yaml"
done

# --- what the manifests must say ---------------------------------------------------
echo "--- tests/deploy/check_manifests.py"
if "$PY" tests/deploy/check_manifests.py "$RENDERED" "$ACA/app.yaml" "$ACA/job.yaml" "${OVERLAY_ARGS[@]}" >"$WORK/sem.log" 2>&1; then
    PASSED=$((PASSED + $(grep -c '^PASS' "$WORK/sem.log")))
    echo "PASS: check_manifests.py: $(grep -c '^PASS' "$WORK/sem.log") checks"
else
    grep -v '^PASS' "$WORK/sem.log"
    fail "check_manifests.py"
fi

echo
echo "deploy manifests: $PASSED passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '  failed: %s\n' "${FAILED[@]}"
    exit 1
fi
