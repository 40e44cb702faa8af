"""CI checks of deploy/: overlays render, settings and entry points match the code, and pods are hardened.

A LOOKBOOK_* variable that the code does not know stops a process at start, and a command that names a
missing module crash-loops a pod, so both are checked here rather than found on a cluster.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from shared.settings import PREFIX, Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod")
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
LOOKBOOK_IMAGE = re.compile(r"(^|/)lookbook(:|$)")
PLACEHOLDER = "placeholder-from-secret"


# --------------------------------------------------------------------------- rendering


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: install it (`kubectl kustomize` needs no cluster) to run this")
    done = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"kubectl kustomize deploy/k8s/overlays/{overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert found, f"no {kind} named {name!r} in the rendered manifests"
    return found[0]


def workloads(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads(docs):
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, container


def lookbook_containers(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload, container in containers(docs):
        if LOOKBOOK_IMAGE.search(container["image"]):
            yield workload, container


def container_env(docs: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """What the process will see: ConfigMaps from envFrom, then env; Secret values become placeholders."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        elif "secretRef" in source:
            raise AssertionError("use secretKeyRef per variable, so variable names stay visible and checked")
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = named(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = PLACEHOLDER
    return env


def lookbook_vars(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(PREFIX)}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in lookbook_vars(env).items():
        monkeypatch.setenv(key, value)
    return load_settings()


KNOWN = {PREFIX + name.upper() for name in Settings.model_fields}


# --------------------------------------------------------------------------- entry points


def entry_point_problem(argv: list[str]) -> str | None:
    """None when argv starts a real Lookbook entry point, else what is wrong with it."""
    if argv[:2] == ["python", "-m"] and len(argv) >= 3:
        module = argv[2]
        if not module.startswith("services."):
            return f"{module} is not a Lookbook service module"
        package = ROOT.joinpath(*module.split("."))
        main_file = package / "__main__.py" if package.is_dir() else package.with_suffix(".py")
        if not main_file.is_file():
            return f"`python -m {module}` has no {main_file.relative_to(ROOT)}"
        # A sub-command word (`python -m services.workers beat`) must be one the module dispatches on.
        source = main_file.read_text()
        for word in argv[3:]:
            if not word.startswith("-") and f'"{word}"' not in source and f"'{word}'" not in source:
                return f"{main_file.relative_to(ROOT)} does not handle the argument {word!r}"
        return None
    if argv and argv[0] == "lookbook":
        from services.cli import main

        command: click.Command = main
        for word in argv[1:]:
            if word.startswith("-"):
                break
            if not isinstance(command, click.Group):
                break  # a positional argument of a leaf command
            if word not in command.commands:
                return f"`lookbook {' '.join(argv[1:])}`: {word!r} is not a command of {command.name!r}"
            command = command.commands[word]
        if isinstance(command, click.Group):
            return f"`{' '.join(argv)}` names a command group, not a command"
        return None
    return f"{argv!r} is neither `python -m services.<name>` nor `lookbook <command>`"


def test_entry_point_checker_tells_real_from_made_up() -> None:
    assert entry_point_problem(["python", "-m", "services.no_such_service"]) is not None
    assert entry_point_problem(["lookbook", "no-such-command"]) is not None
    assert entry_point_problem(["gunicorn", "app"]) is not None
    assert entry_point_problem(["lookbook", "bench"]) is not None  # a group, not a command


# --------------------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_tier(overlay: str) -> None:
    docs = render(overlay)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name in ("gateway", "vision", "curation", "workers", "beat"):
        assert ("Deployment", name) in names, f"{overlay}: Deployment {name} missing"
    for name in ("redis", "qdrant"):
        assert ("StatefulSet", name) in names, f"{overlay}: StatefulSet {name} missing"
    for name in ("gateway", "vision"):
        assert ("HorizontalPodAutoscaler", name) in names, f"{overlay}: HPA {name} missing"
    for name in ("gateway", "vision", "qdrant"):
        assert ("PodDisruptionBudget", name) in names, f"{overlay}: PDB {name} missing"
    # The NetworkPolicies admit pods by this label: a pod without it could not reach Qdrant or Redis.
    for workload in workloads(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels.get("app.kubernetes.io/part-of") == "lookbook", workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_lookbook_variable_is_a_real_setting(overlay: str) -> None:
    docs = render(overlay)
    for workload, container in containers(docs):
        unknown = sorted(set(lookbook_vars(container_env(docs, container))) - KNOWN)
        assert not unknown, (f"{overlay}: {workload['metadata']['name']}/{container['name']} sets {unknown}, "
                             "which shared/settings.py does not read: the process would refuse to start")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_load_in_every_container(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every required setting is set, every value parses, and the combination is consistent."""
    docs = render(overlay)
    required = {PREFIX + n.upper() for n, f in Settings.model_fields.items() if f.is_required()}
    for workload, container in lookbook_containers(docs):
        env = container_env(docs, container)
        missing = sorted(required - set(env))
        where = f"{overlay}: {workload['metadata']['name']}/{container['name']}"
        assert not missing, f"{where} lacks required settings {missing}"
        settings = settings_from(env, monkeypatch)
        assert settings.mode == "scale-out", f"{where} must run with LOOKBOOK_MODE=scale-out"
        assert settings.qdrant_url and settings.redis_url, f"{where} needs the Qdrant cluster and Redis URLs"
        assert settings.host == "0.0.0.0", f"{where} must bind all interfaces for probes and Services"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_commands_are_real_entry_points(overlay: str) -> None:
    docs = render(overlay)
    seen = set()
    for workload, container in lookbook_containers(docs):
        argv = [*container.get("command", []), *container.get("args", [])]
        assert argv, f"{workload['metadata']['name']}: give an explicit command, not the image default"
        problem = entry_point_problem(argv)
        assert problem is None, f"{overlay}: {workload['metadata']['name']}: {problem}"
        seen.add(shlex.join(argv))
    assert {"python -m services.gateway", "python -m services.vision", "python -m services.curation",
            "python -m services.workers", "python -m services.workers beat"} <= seen


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_sized_and_probed(overlay: str) -> None:
    docs = render(overlay)
    for workload, container in containers(docs):
        where = f"{overlay}: {workload['metadata']['name']}/{container['name']}"
        pod = pod_spec(workload)
        pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, f"{where} may run as root"
        user = ctx.get("runAsUser") or pod_ctx.get("runAsUser") or 0
        assert user > 0, f"{where}: set a non-zero runAsUser"
        assert ctx.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem must be read-only"
        assert ctx.get("allowPrivilegeEscalation") is False, f"{where}: set allowPrivilegeEscalation: false"
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL capabilities"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: mount an emptyDir on /tmp (the root filesystem is read-only)"
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for unit in ("cpu", "memory"):
                assert unit in resources.get(part, {}), f"{where}: resources.{part}.{unit} missing"
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{where}: {probe} missing"


def _proto_services() -> set[str]:
    names = set()
    for proto in (ROOT / "protos").rglob("*.proto"):
        text = proto.read_text()
        package = re.search(r"^package\s+([\w.]+);", text, re.M)
        for service in re.findall(r"^service\s+(\w+)", text, re.M):
            names.add(f"{package[1]}.{service}" if package else service)
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_use_native_grpc_probes_and_drain(overlay: str) -> None:
    docs = render(overlay)
    services = _proto_services()
    grpc_servers = 0
    for workload, container in lookbook_containers(docs):
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if "grpc" not in ports:
            continue
        grpc_servers += 1
        where = f"{overlay}: {workload['metadata']['name']}"
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        assert "grpc" in readiness and "grpc" in liveness, f"{where}: use native grpc: probes"
        assert readiness["grpc"]["port"] == ports["grpc"] == liveness["grpc"]["port"]
        assert readiness["grpc"].get("service") in services, (
            f"{where}: readiness asks for {readiness['grpc'].get('service')!r}, not a service in protos/")
        settings_env = container_env(docs, container)
        default_grace = Settings.model_fields["shutdown_grace_s"].default
        grace = float(settings_env.get("LOOKBOOK_SHUTDOWN_GRACE_S", default_grace))
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        sleep = float(pre_stop.get("exec", {}).get("command", ["", "", "0"])[-1]) if pre_stop else 0.0
        period = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
        assert period > grace + sleep, (
            f"{where}: terminationGracePeriodSeconds {period} must exceed preStop {sleep}s + drain {grace}s")
        # The configured port is the one the probes and the Service use.
        name = workload["metadata"]["name"]
        assert int(settings_env[f"LOOKBOOK_{name.upper()}_PORT"]) == ports["grpc"], f"{where}: port mismatch"
    assert grpc_servers == 3, f"{overlay}: expected gateway, vision and curation to serve gRPC"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_beat_is_a_singleton(overlay: str) -> None:
    docs = render(overlay)
    beat = named(docs, "Deployment", "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate", "a rolling update would run two schedulers"
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")}
    assert targets == {"gateway", "vision"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_qdrant_is_a_replicated_three_node_cluster(overlay: str) -> None:
    docs = render(overlay)
    qdrant = named(docs, "StatefulSet", "qdrant")
    assert qdrant["spec"]["replicas"] == 3
    container = pod_spec(qdrant)["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    p2p = int(env["QDRANT__CLUSTER__P2P__PORT"])
    assert p2p in {p["containerPort"] for p in container["ports"]}
    script = " ".join(container.get("args", []))
    assert "--bootstrap" in script and f"qdrant-0.qdrant-headless:{p2p}" in script
    assert any(e["name"] == "QDRANT__SERVICE__API_KEY" and "secretKeyRef" in e.get("valueFrom", {})
               for e in container["env"])
    headless = named(docs, "Service", "qdrant-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    config = next(c["data"] for c in of_kind(docs, "ConfigMap")
                  if c["metadata"]["name"].startswith("lookbook-config"))
    shards, replicas = int(config["LOOKBOOK_SHARD_NUMBER"]), int(config["LOOKBOOK_REPLICATION_FACTOR"])
    writes = int(config["LOOKBOOK_WRITE_CONSISTENCY_FACTOR"])
    assert shards >= 1 and replicas == 2 and 1 <= writes <= replicas <= qdrant["spec"]["replicas"]


def test_prod_ships_no_secret_values_and_dev_only_placeholders() -> None:
    assert not of_kind(render("prod"), "Secret"), "prod must reference an existing Secret, never carry one"
    for secret in of_kind(render("dev"), "Secret"):
        import base64

        for key, value in {**secret.get("data", {}), **secret.get("stringData", {})}.items():
            text = base64.b64decode(value).decode() if key in secret.get("data", {}) else value
            assert "not-secret" in text, f"dev Secret {key} must be an obvious placeholder"


# --------------------------------------------------------------------------- docker compose


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def compose_lookbook_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items()
            if LOOKBOOK_IMAGE.search(svc.get("image", ""))}


def _interpolated(value: Any) -> str:
    # ${VAR:?message} or ${VAR:-default}: what docker compose substitutes when VAR is provided.
    text = str(value)
    text = re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", PLACEHOLDER, text)
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def test_compose_parses_and_runs_the_same_entry_points_as_kubernetes() -> None:
    services = compose_lookbook_services()
    assert {"gateway", "vision", "curation", "workers", "beat"} <= set(services)
    assert {"redis", "qdrant"} <= set(compose()["services"])
    commands = set()
    for name, svc in services.items():
        argv = svc["command"]
        assert isinstance(argv, list), f"compose {name}: use the exec form, so the service gets SIGTERM"
        problem = entry_point_problem(argv)
        assert problem is None, f"compose {name}: {problem}"
        commands.add(shlex.join(argv))
    k8s = {shlex.join([*c.get("command", []), *c.get("args", [])])
           for _, c in lookbook_containers(render("prod"))}
    assert commands == k8s
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_compose_settings_are_real_and_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in compose_lookbook_services().items():
        env = {k: _interpolated(v) for k, v in svc["environment"].items()}
        unknown = sorted(set(lookbook_vars(env)) - KNOWN)
        assert not unknown, f"compose {name} sets {unknown}, which shared/settings.py does not read"
        settings = settings_from(env, monkeypatch)
        assert settings.mode == "scale-out" and settings.qdrant_url and settings.redis_url
        assert svc.get("read_only") is True and str(svc.get("user", "0")).split(":")[0] != "0"
        grace = re.fullmatch(r"(\d+)s", svc["stop_grace_period"])
        assert grace and int(grace[1]) > settings.shutdown_grace_s, f"compose {name}: raise stop_grace_period"
