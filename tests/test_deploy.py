"""deploy/ agrees with the exporter: ports, paths and metric names in the
Kubernetes manifests, the Dockerfile, the systemd unit and the alert rules
are checked against the exporter's own constants; the rules are checked and
unit-tested with promtool (Debian's `prometheus`, installed by
scripts/setup.sh --dev); the unit with `systemd-analyze verify`. No cluster,
no image build: README "Deployment" says what was not run."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tracer.engine.httpd import DEFAULT_LISTEN_PORT, HEALTH_PATH, METRICS_PATH
from tracer.report.prometheus import HISTOGRAMS, METRIC_NAMES

JOB_NAME = "closewait"  # the rules' up{job=...}; scrape job and Service name
# Series Prometheus itself makes for every target.
PROMETHEUS_SERIES = ["up", "scrape_duration_seconds", "scrape_samples_scraped"]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "closewait-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "closewait-rules.test.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.example.yml"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
UNIT = DEPLOY / "systemd" / "closewait-exporter.service"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in load_all(p)]


def k8s_object(kind: str, name: str = "closewait") -> dict:
    found = [o for o in k8s_objects() if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def exporter_container() -> dict:
    spec = k8s_object("DaemonSet")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "closewait"]
    return container


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in rules() if "alert" in r}


# --- PromQL: the metric names an expression selects -----------------------------

_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not
    functions, keywords, label names (matchers, by/without/on lists),
    durations or strings. Good enough for rule files, not a parser."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def known(name: str) -> bool:
    if name in METRIC_NAMES or name in PROMETHEUS_SERIES:
        return True
    return any(name == h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count"))


def test_metric_names_parser():
    assert metric_names(
        'deriv((sum without (peer, pid) (closewait_leaked_sockets{a="b"}))[15m:1m]) > 0 '
        "and max by (comm) (x_total offset 15m) unless on(comm) absent(up{job='closewait'})"
    ) == {"closewait_leaked_sockets", "x_total", "up"}
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))") == {"h_bucket"}


# --- YAML -------------------------------------------------------------------------


def test_every_yaml_parses():
    files = yaml_files()
    assert len(files) >= 8, files
    for path in files:
        assert load_all(path), f"{path} is empty"


def test_kubernetes_objects_have_kind_and_namespace():
    for obj in k8s_objects():
        if obj.get("kind") == "Kustomization":
            continue
        assert obj.get("apiVersion") and obj.get("kind"), obj
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "closewait", obj["metadata"]


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == manifests
    assert kust["namespace"] == "closewait"


# --- ports and paths agree with the exporter's constants --------------------------


def _flag(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag:
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def test_daemonset_listens_on_the_port_it_declares():
    c = exporter_container()
    args = c.get("args", [])
    assert args[:1] == ["exporter"] and "--all" in args
    listen = _flag(args, "--listen")
    assert listen == f"0.0.0.0:{DEFAULT_LISTEN_PORT}", "the pod must listen on its pod IP"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": DEFAULT_LISTEN_PORT}


def test_daemonset_probes_use_health_path():
    c = exporter_container()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == HEALTH_PATH, probe
        assert get["port"] in ("metrics", DEFAULT_LISTEN_PORT), probe


def test_daemonset_essentials():
    ds = k8s_object("DaemonSet")
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    assert spec["hostPID"] is True
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(DEFAULT_LISTEN_PORT)
    assert ann["prometheus.io/path"] == METRICS_PATH
    c = exporter_container()
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/kernel/tracing", "/lib/modules", "/usr/src", "/sys/fs/cgroup"):
        assert mounts[path].get("readOnly") is True, path
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly"), "BCC needs a writable /tmp"
    assert c["resources"]["limits"]["memory"]
    assert pod["metadata"]["labels"].items() >= ds["spec"]["selector"]["matchLabels"].items()


def test_service_and_servicemonitor_point_at_the_metrics_port():
    svc = k8s_object("Service", JOB_NAME)  # the operator's job label = Service name
    (port,) = svc["spec"]["ports"]
    assert port["port"] == DEFAULT_LISTEN_PORT and port["targetPort"] == "metrics"
    pod_labels = k8s_object("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= svc["spec"]["selector"].items()
    sm = k8s_object("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert svc["metadata"]["labels"].items() >= sm["spec"]["selector"]["matchLabels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == port["name"] and ep["path"] == METRICS_PATH


def test_prometheus_example_scrapes_the_exporter():
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    static = jobs[JOB_NAME]
    assert static.get("metrics_path", "/metrics") == METRICS_PATH
    targets = [t for sc in static["static_configs"] for t in sc["targets"]]
    assert targets == [f"127.0.0.1:{DEFAULT_LISTEN_PORT}"]
    k8s = [j for j in jobs.values() if "kubernetes_sd_configs" in j]
    assert k8s, "a kubernetes_sd example"
    for job in k8s:  # its job label must end up as JOB_NAME, or the up alerts miss it
        relabel_job = [r for r in job["relabel_configs"] if r.get("target_label") == "job"]
        assert job["job_name"] == JOB_NAME or [r["replacement"] for r in relabel_job] == [JOB_NAME]


def test_dockerfile_defaults():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM debian:bookworm", text, re.M)
    assert re.search(rf"^EXPOSE {DEFAULT_LISTEN_PORT}\b", text, re.M)
    assert re.search(r'^ENTRYPOINT \["closewait"\]', text, re.M)
    cmd = re.search(r"^CMD (\[.*\])", text, re.M)
    assert cmd and yaml.safe_load(cmd.group(1)) == exporter_container()["args"]
    assert f"127.0.0.1:{DEFAULT_LISTEN_PORT}{HEALTH_PATH}" in text  # HEALTHCHECK


def test_systemd_unit_runs_the_exporter():
    exec_start = [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    assert len(exec_start) == 1
    argv = shlex.split(exec_start[0])
    assert argv[0].endswith("/closewait") and argv[1:3] == ["exporter", "--all"]
    listen = _flag(argv, "--listen")
    assert listen is None or listen.endswith(f":{DEFAULT_LISTEN_PORT}")


# --- rules ---------------------------------------------------------------------


def test_rule_metric_names_are_known():
    unknown = {
        (r.get("alert") or r.get("record"), name)
        for r in rules()
        for name in metric_names(r["expr"])
        if not known(name)
    }
    assert not unknown, f"metrics not served by the exporter: {sorted(unknown)}"


def test_every_alert_has_severity_and_annotations():
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        ann = rule["annotations"]
        assert {"summary", "description", "runbook"} <= ann.keys(), name
        if name.startswith(("CloseWaitLeak", "CloseWaitFd")):
            text = ann["summary"] + ann["description"]
            assert "$labels.comm" in text and "$labels.container" in text, name
            assert "closewait watch --pid" in ann["runbook"], name
            assert "closewait snapshot" in ann["runbook"], name


def test_expected_alerts_exist():
    assert {
        "CloseWaitLeakOld", "CloseWaitLeaksGrowing", "CloseWaitFdExhaustionSoon",
        "CloseWaitTracerLosingEvents", "CloseWaitTracerMapFull", "CloseWaitExporterDown",
    } <= alerts().keys()  # fmt: skip
    assert f'up{{job="{JOB_NAME}"}}' in alerts()["CloseWaitExporterDown"]["expr"]


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing, quiet = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alerts())
    assert not names - firing, f"no firing case: {sorted(names - firing)}"
    assert not names - quiet, f"no not-firing case: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, "tests of alerts that do not exist"


# --- promtool and systemd-analyze ----------------------------------------------------


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert shutil.which(argv[0]), f"{argv[0]} missing: run scripts/setup.sh --dev"
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules():
    r = _run(["promtool", "check", "rules", "--lint-fatal", RULES.name], RULES.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules():
    r = _run(["promtool", "test", "rules", RULE_TESTS.name], RULES.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_systemd_unit_verifies(tmp_path: Path):
    # The unit's ExecStart names where a host install puts closewait; point
    # it at this checkout's so that verify can check the executable too.
    closewait = Path(sys.executable).with_name("closewait")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/closewait", str(closewait)))
    r = _run(["systemd-analyze", "verify", str(unit)], tmp_path)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
