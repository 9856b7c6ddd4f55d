"""What the deploy manifests must say, beyond their schemas.

    python check_manifests.py RENDERED_K8S_YAML ACA_APP_YAML ACA_JOB_YAML [OVERLAY=RENDERED_YAML]...

RENDERED_K8S_YAML holds every overlay's rendering; each OVERLAY=... is one
overlay rendered alone (it must hold exactly one workload).

The facts they must agree with are read from the repository itself: the
share root from config/sharelink.toml, the `app` user's ids and the image's
CMD (the pipeline command) from the Dockerfile, sharelink's exit codes from
src/exit_code.rs. Prints PASS/FAIL lines; exits 1 on any FAIL.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FAILED = []


def check(desc, ok, detail=""):
    if ok:
        print(f"PASS: {desc}")
    else:
        FAILED.append(desc)
        print(f"FAIL: {desc}{': ' + str(detail) if detail else ''}")


def exit_codes():
    """ExitCode variant -> number, from `ExitCode::Name => 65,` in code()."""
    text = (ROOT / "src/exit_code.rs").read_text()
    codes = {m[0]: int(m[1]) for m in re.findall(r"ExitCode::(\w+) => (\d+),", text)}
    assert codes, "no exit codes found in src/exit_code.rs"
    return codes


def dockerfile_ids():
    text = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"^ARG APP_UID=(\d+)", text, re.M)
    gid = re.search(r"^ARG APP_GID=(\d+)", text, re.M)
    return int(uid[1]), int(gid[1])


def dockerfile_cmd():
    """The image's CMD, exec form: the command the demo image runs."""
    text = (ROOT / "Dockerfile").read_text()
    cmd = re.findall(r"^CMD (\[.*\])\s*$", text, re.M)
    assert cmd, "no exec-form CMD in the Dockerfile"
    return json.loads(cmd[-1])


def mount_options(opts):
    """A list (Kubernetes) or comma-separated string (Container Apps) -> dict."""
    if isinstance(opts, str):
        opts = opts.split(",")
    out = {}
    for o in opts:
        k, _, v = o.partition("=")
        out[k] = v
    return out


def image_paths():
    """Absolute paths the demo image has, from the Dockerfile: the sharelink
    binary it installs, and /app/X for each examples/pipeline/X it copies."""
    text = (ROOT / "Dockerfile").read_text()
    have = set()
    if re.search(r"(cp|COPY|install).*\s/usr/local/bin/sharelink", text):
        have.add("/usr/local/bin/sharelink")
    if re.search(r"^COPY examples/pipeline/ /app/", text, re.M):
        for f in (ROOT / "examples/pipeline").rglob("*"):
            have.add("/app/" + str(f.relative_to(ROOT / "examples/pipeline")))
    return have


# Commands the image's base (python:*-slim, or Debian with python3) has on PATH.
BASE_COMMANDS = {"python3", "python", "true", "sh"}
IMAGE_PATHS = image_paths()


def check_in_image(where, argv):
    """The program and every absolute-path argument exist in the image."""
    if not argv:
        return
    prog = argv[0]
    check(f"{where}: {prog} is in the image",
          prog in IMAGE_PATHS or prog in BASE_COMMANDS, argv)
    for a in argv[1:]:
        if a.startswith("/"):
            check(f"{where}: {a} is in the image", a in IMAGE_PATHS, argv)


def check_image_tag(where, image, policy):
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    check(f"{where}: image {image} has a fixed tag (not latest)", bool(tag) and tag != "latest", image)
    check(f"{where}: imagePullPolicy {policy or 'default'} with a fixed tag",
          policy in (None, "IfNotPresent", "Always") and tag not in ("", "latest"), (image, policy))


CODES = exit_codes()
UID, GID = dockerfile_ids()
PIPELINE = dockerfile_cmd()
SHARE_ROOT = tomllib.loads((ROOT / "config/sharelink.toml").read_text())["share_root"]
ENTRYPOINT = ["/usr/local/bin/sharelink", "run"]
STATUS = ["/usr/local/bin/sharelink", "status"]
# What Microsoft recommends for azurefile-csi, plus the image's user.
NEEDED_OPTIONS = {
    "mfsymlinks": "",
    "nobrl": "",
    "cache": "strict",
    "actimeo": "30",
    "nosharesock": "",
    "uid": str(UID),
    "gid": str(GID),
}
# A first migration may take a while: at least 30 min before a restart.
MIN_STARTUP_BUDGET = 30 * 60


def check_options(where, opts):
    got = mount_options(opts)
    for k, v in NEEDED_OPTIONS.items():
        check(f"{where}: mount option {k}{'=' + v if v else ''}", got.get(k) == v, got)
    for k in ("dir_mode", "file_mode"):
        check(f"{where}: mount option {k} set", re.fullmatch(r"0[0-7]{3}", got.get(k, "")), got)


def check_pipeline_container(where, c, pod_spec, runs_pipeline=True):
    cmd = c.get("command", [])
    check_in_image(f"{where} command", cmd)
    check_in_image(f"{where} args", c.get("args", []))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe, {})
        if "exec" in p:
            check_in_image(f"{where} {probe}", p["exec"].get("command", []))
        check(f"{where}: no {probe} over HTTP (the image serves no port)", "httpGet" not in p, p)
    check(f"{where}: sharelink is the container's entrypoint (`sharelink run ... --`)",
          cmd[:2] == ENTRYPOINT and cmd[-1] == "--", cmd)
    if runs_pipeline:
        # `command:` replaces the image's ENTRYPOINT and `args:` its CMD: a
        # stale command here is a pod that exits at once (127, or 2 when
        # python3 cannot open the script).
        check(f"{where}: args are the image's CMD, the demo pipeline ({' '.join(PIPELINE)})",
              c.get("args") == PIPELINE, c.get("args"))
    check(f"{where}: the pipeline runs as the non-root user `app` (--user app)",
          "--user" in cmd and cmd[cmd.index("--user") + 1] == "app", cmd)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(f"{where}: SHARELINK_REQUIRE_MOUNT=true", env.get("SHARELINK_REQUIRE_MOUNT") == "true", env)
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    check(f"{where}: the share is mounted at share_root {SHARE_ROOT}", SHARE_ROOT in mounts, mounts)
    if pod_spec is not None:
        init = [i.get("name") for i in pod_spec.get("initContainers", [])
                if "sharelink" in " ".join(i.get("command", []) + i.get("args", []))]
        check(f"{where}: no initContainer runs sharelink (its symlinks would be lost)", not init, init)
        sc = c.get("securityContext", {})
        caps = sc.get("capabilities", {})
        check(f"{where}: starts as root (linking rewrites /app), no privilege escalation",
              sc.get("runAsUser") == 0 and sc.get("allowPrivilegeEscalation") is False, sc)
        check(f"{where}: all capabilities dropped but what linking and --user need",
              caps.get("drop") == ["ALL"]
              and set(caps.get("add", [])) == {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "KILL"},
              caps)


def kubernetes(path):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    kinds = sorted(by_kind)
    check("kubernetes: StorageClass, PVC, Deployment, CronJob and Job present",
          {"StorageClass", "PersistentVolumeClaim", "Deployment", "CronJob", "Job"} <= set(kinds), kinds)

    ns = by_kind["Namespace"][0]
    labels = ns["metadata"].get("labels", {})
    check("Namespace: Pod Security enforce label (baseline or restricted)",
          labels.get("pod-security.kubernetes.io/enforce") in ("baseline", "restricted"), labels)
    # Pod Security `baseline` allows adding only these capabilities.
    baseline_caps = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                     "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
    for d in docs:
        spec = d.get("spec", {})
        pod = (spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template") or {}).get("spec")
        if not pod:
            continue
        for c in pod.get("containers", []):
            where = f"{d['kind']} {d['metadata']['name']}"
            check_image_tag(where, c.get("image", ""), c.get("imagePullPolicy"))
            sc = c.get("securityContext", {})
            added = set(sc.get("capabilities", {}).get("add", []))
            check(f"{where}: meets Pod Security baseline (no privileged, capabilities within baseline)",
                  not sc.get("privileged") and added <= baseline_caps, sc)

    sc = by_kind["StorageClass"][0]
    check("StorageClass: azurefile-csi provisioner (file.csi.azure.com)", sc.get("provisioner") == "file.csi.azure.com")
    check("StorageClass: reclaimPolicy Retain (the share holds the data)", sc.get("reclaimPolicy") == "Retain")
    check_options("StorageClass", sc.get("mountOptions", []))

    pvc = by_kind["PersistentVolumeClaim"][0]
    check("PVC: ReadWriteMany", pvc["spec"].get("accessModes") == ["ReadWriteMany"])
    check("PVC: uses the StorageClass", pvc["spec"].get("storageClassName") == sc["metadata"]["name"])

    dep = by_kind["Deployment"][0]
    check("Deployment: at least 3 replicas", dep["spec"].get("replicas", 1) >= 3, dep["spec"].get("replicas"))
    pod = dep["spec"]["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
    check("Deployment: mounts the PVC", claims == [pvc["metadata"]["name"]], claims)
    c = pod["containers"][0]
    check_pipeline_container("Deployment", c, pod)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe, {})
        check(f"Deployment: {probe} runs `sharelink status`", p.get("exec", {}).get("command") == STATUS, p)
    sp = c.get("startupProbe", {})
    budget = sp.get("failureThreshold", 3) * sp.get("periodSeconds", 10)
    check(f"Deployment: startupProbe allows a first migration ({budget} s >= {MIN_STARTUP_BUDGET} s)",
          budget >= MIN_STARTUP_BUDGET)
    lp = c.get("livenessProbe", {})
    check("Deployment: liveness tolerates minutes of share trouble (>= 3 min)",
          lp.get("failureThreshold", 3) * lp.get("periodSeconds", 10) >= 180)

    cj = by_kind["CronJob"][0]
    check("CronJob: concurrencyPolicy Forbid", cj["spec"].get("concurrencyPolicy") == "Forbid")
    job = cj["spec"]["jobTemplate"]["spec"]
    jpod = job["template"]["spec"]
    check("CronJob: restartPolicy Never (podFailurePolicy needs it)", jpod.get("restartPolicy") == "Never")
    check_pipeline_container("CronJob", jpod["containers"][0], jpod)
    rules = job.get("podFailurePolicy", {}).get("rules", [])
    actions = [r.get("action") for r in rules]
    check("CronJob: podFailurePolicy actions are ones Kubernetes knows",
          set(actions) <= {"FailJob", "FailIndex", "Ignore", "Count"}, actions)

    def action_for(code):
        for r in rules:
            e = r.get("onExitCodes")
            if e and (code in e["values"]) == (e["operator"] == "In"):
                return r["action"]
        return "Count"

    # The same on every retry. 2 is also what python3 exits with when it
    # cannot open the pipeline's script.
    for name in ("Usage", "Unsafe", "Config", "NotExecutable", "NotFound"):
        check(f"CronJob: exit {CODES[name]} ({name}) fails the Job at once", action_for(CODES[name]) == "FailJob", rules)
    # A stopped pipeline (a pod deleted mid-run: SIGTERM, which the demo
    # handles as Ctrl-C, dying of SIGINT: 130) is not a broken image.
    for sig, name in ((2, "SIGINT"), (15, "SIGTERM")):
        check(f"CronJob: exit {128 + sig} (pipeline stopped by {name}) is not FailJob",
              action_for(128 + sig) != "FailJob", rules)
    check(f"CronJob: exit {CODES['ShareUnavailable']} (share unavailable) is retried",
          action_for(CODES["ShareUnavailable"]) in ("Ignore", "Count"), rules)
    check("CronJob: activeDeadlineSeconds bounds the retries", job.get("activeDeadlineSeconds", 0) > 0)
    for r in rules:
        e = r.get("onExitCodes")
        if e:
            check(f"CronJob: podFailurePolicy names the pipeline container ({e.get('containerName')})",
                  e.get("containerName") == jpod["containers"][0]["name"])


def migrate_job(docs):
    jobs = [d for d in docs if d["kind"] == "Job"]
    if not jobs:
        return
    job = jobs[0]["spec"]
    pod = job["template"]["spec"]
    c = pod["containers"][0]
    cmd = c.get("command", []) + c.get("args", [])
    check("Job (migrate): links as the pipeline's user and runs nothing else (`sharelink run --user app -- true`)",
          cmd == ENTRYPOINT + ["--user", "app", "--", "true"], cmd)
    check("Job (migrate): restartPolicy Never", pod.get("restartPolicy") == "Never")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    check(f"Job (migrate): the share is mounted at {SHARE_ROOT}", SHARE_ROOT in mounts, mounts)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    check("Job (migrate): SHARELINK_REQUIRE_MOUNT=true", env.get("SHARELINK_REQUIRE_MOUNT") == "true", env)
    check_in_image("Job (migrate) command", c.get("command", []))
    rules = job.get("podFailurePolicy", {}).get("rules", [])
    failjob = {v for r in rules if r.get("action") == "FailJob" for v in r.get("onExitCodes", {}).get("values", [])}
    check("Job (migrate): 65 and 78 fail the Job at once", {CODES["Unsafe"], CODES["Config"]} <= failjob, rules)


def overlays(pairs):
    """Each overlay alone renders one workload: applying one never deploys
    another without a word."""
    workloads = {"Deployment", "CronJob", "Job"}
    for pair in pairs:
        name, _, path = pair.partition("=")
        kinds = [d["kind"] for d in yaml.safe_load_all(Path(path).read_text()) if d]
        got = [k for k in kinds if k in workloads]
        check(f"overlay {name}: exactly one workload ({got})", len(got) == 1, kinds)


def container_apps(app_path, job_path):
    for path, kind in ((app_path, "app"), (job_path, "job")):
        doc = yaml.safe_load(Path(path).read_text())
        tpl = doc["properties"]["template"]
        vols = [v for v in tpl.get("volumes", []) if v.get("storageType") == "AzureFile"]
        check(f"Container Apps {kind}: an AzureFile volume", len(vols) == 1, tpl.get("volumes"))
        if vols:
            check_options(f"Container Apps {kind}", vols[0].get("mountOptions", ""))
        c = tpl["containers"][0]
        # Both run the demo image's pipeline (the app keeps it running).
        check_pipeline_container(f"Container Apps {kind}", c, None)
        check_image_tag(f"Container Apps {kind}", c.get("image", ""), None)
        if kind == "app":
            check("Container Apps app: at least 3 replicas", tpl.get("scale", {}).get("minReplicas", 0) >= 3)
            # Container Apps probes are HTTP or TCP only, and the demo image
            # listens on no port: a probe or ingress would fail forever.
            probes = c.get("probes", [])
            check("Container Apps app: no HTTP/TCP probe on a port the image does not serve", not probes, probes)
            check("Container Apps app: no ingress (the image serves no port)",
                  "ingress" not in doc["properties"].get("configuration", {}))


if __name__ == "__main__":
    kubernetes(sys.argv[1])
    migrate_job([d for d in yaml.safe_load_all(Path(sys.argv[1]).read_text()) if d])
    overlays(sys.argv[4:])
    container_apps(sys.argv[2], sys.argv[3])
    print(f"manifest checks: {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)
