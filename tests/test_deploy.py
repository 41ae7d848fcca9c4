"""The container recipe and the Kubernetes example: what this machine can check without a container runtime or a
cluster (no docker daemon runs here, so the image itself is never built by these tests)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from mcnotify import stop
from mcnotify.cli import app
from mcnotify.config import SCHEMA, parse

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions as (KEYWORD, rest), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def last(keyword: str) -> str:
    return [rest for k, rest in instructions() if k == keyword][-1]


def test_containerfile_copies_only_files_that_exist_and_are_in_the_build_context() -> None:
    # .dockerignore excludes everything, then lets back in what the recipe copies: each COPY source must be both.
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    copies = [rest.split() for keyword, rest in instructions() if keyword == "COPY" and "--from=" not in rest]
    sources = [src for *srcs, _dest in copies for src in srcs]
    assert {"constraints.txt", "pyproject.toml", "mcnotify", "scripts/container_liveness.py"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src.rstrip("/") in allowed, f"{src} is copied but .dockerignore keeps it out of the context"
    for entry in allowed:
        assert (ROOT / entry).exists(), f".dockerignore lets in {entry}, which does not exist"
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert "-c constraints.txt" in runs  # the pinned versions, not whatever the ranges allow today


def test_containerfile_runs_the_follower_as_a_non_root_user() -> None:
    assert json.loads(last("ENTRYPOINT")) == ["mcnotify"]
    assert json.loads(last("CMD")) == ["run-all", "--follow"]
    assert last("STOPSIGNAL") == "SIGTERM"
    assert last("USER") == "10001:10001"  # numeric, so runAsNonRoot can check it
    assert "HEALTHCHECK" not in dict(instructions())
    stages = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    # The console script the ENTRYPOINT names, and the command and option the CMD passes, exist.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["mcnotify"] == "mcnotify.cli:main"
    helped = CliRunner().invoke(app, ["run-all", "--help"], env={"COLUMNS": "200"})
    assert helped.exit_code == 0 and "--follow" in helped.output


def load_liveness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("container_liveness", ROOT / "scripts" / "container_liveness.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_liveness_reads_this_pods_follower_line() -> None:
    verdict = load_liveness().verdict
    line = {"host": "mcnotify-abc", "pid": 1, "last_cycle": 1000.0, "stopped": False}
    assert verdict({"follower": line}, "mcnotify-abc", 1100.0, 900) is None
    assert "900" in verdict({"follower": line}, "mcnotify-abc", 2000.0, 900)
    assert "not this pod" in verdict({"follower": line}, "mcnotify-xyz", 1100.0, 900)
    assert "stopped" in verdict({"follower": {**line, "stopped": True}}, "mcnotify-abc", 1100.0, 900)
    assert "no follower" in verdict({"follower": None}, "mcnotify-abc", 1100.0, 900)


def test_liveness_with_several_followers_reads_this_pods_own_process() -> None:
    """Every follower overwrites the single `follower` entry; each pod must be judged by its own heartbeat."""
    verdict = load_liveness().verdict
    processes = [
        {"host": f"mcnotify-{name}", "pid": 1, "role": "follower", "heartbeat_age": age}
        for name, age in (("a", 2.0), ("b", 4.0), ("c", 1000.0))
    ]
    data = {"follower": {"host": "mcnotify-a", "last_cycle": 1000.0}, "processes": processes}
    assert verdict(data, "mcnotify-a", 1001.0, 900) is None
    assert verdict(data, "mcnotify-b", 1001.0, 900) is None  # not the host that wrote `follower` last
    assert "1000 s ago" in (verdict(data, "mcnotify-c", 1001.0, 900) or "")
    assert "no follower of this pod" in (verdict(data, "mcnotify-d", 1001.0, 900) or "")
    # Each follower's own last cycle, when listed, decides: a loop stuck while its heartbeat thread beats is dead.
    stuck = [{**processes[0], "last_cycle": 1.0}, {**processes[1], "last_cycle": 1000.0}]
    assert "last cycle was 1000 s ago" in (verdict({"processes": stuck}, "mcnotify-a", 1001.0, 900) or "")
    assert verdict({"processes": stuck}, "mcnotify-b", 1001.0, 900) is None


def kustomize(folder: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("!!! kubectl not installed: the kustomizations are NOT rendered")
    done = subprocess.run([kubectl, "kustomize", str(KUBE / folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kustomize_renders_the_target_and_the_sqlite_overlay() -> None:
    # Offline: kustomize parses every YAML file it is given and applies the overlay's patch.
    base, sqlite = kustomize("base"), kustomize("sqlite")
    assert "replicas: 3" in base and "name: MCNOTIFY_STATE_URL" in base and "persistentVolumeClaim" not in base
    assert "replicas: 1" in sqlite and "type: Recreate" in sqlite and "rollingUpdate" not in sqlite
    assert "name: MCNOTIFY_STATE_URL" not in sqlite and "claimName: mcnotify-state" in sqlite


@pytest.fixture
def manifests() -> dict[str, list[dict[str, Any]]]:
    yaml = pytest.importorskip(
        "yaml", reason="!!! PyYAML is not installed in this venv (not a dependency): manifests NOT checked"
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(KUBE.rglob("*.yaml")):
        found[str(path.relative_to(KUBE))] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(manifests: dict[str, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    (doc,) = manifests[name]
    return doc


def test_every_manifest_parses_and_names_no_namespace(manifests: dict[str, list[dict[str, Any]]]) -> None:
    assert set(manifests) == {
        "base/configmap.yaml",
        "base/deployment.yaml",
        "base/kustomization.yaml",
        "secret.example.yaml",
        "sqlite/deployment-patch.yaml",
        "sqlite/kustomization.yaml",
        "sqlite/pvc.yaml",
    }
    for docs in manifests.values():
        for doc in docs:
            assert "namespace" not in doc.get("metadata", {}) and doc.get("kind") != "Namespace"


def test_the_deployment_is_hardened(manifests: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(manifests, "base/deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] > 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001 == pod["securityContext"]["fsGroup"]
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # SIGTERM, then the requests in flight get stop.GRACE: allow at least what the systemd unit allows.
    unit = (ROOT / "systemd" / "mcnotify-follow.service").read_text()
    timeout_stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert pod["terminationGracePeriodSeconds"] >= max(timeout_stop, stop.GRACE)


def test_the_follower_reads_the_state_url_and_credentials_from_secrets(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    pod = one(manifests, "base/deployment.yaml")["spec"]["template"]["spec"]
    (follower,) = pod["containers"]
    assert follower["args"] == json.loads(last("CMD"))
    assert follower["livenessProbe"]["exec"]["command"][0] == "mcnotify-liveness"
    assert "/opt/mcnotify/bin/mcnotify-liveness" in CONTAINERFILE.read_text()  # on the image's PATH
    env = {e["name"]: e for e in follower["env"]}
    assert env["MCNOTIFY_STATE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mcnotify-state", "key": "url"}
    mounts = {m["name"]: m["mountPath"] for m in follower["volumeMounts"]}
    assert env["MCNOTIFY_CREDENTIALS_DIR"]["value"] == mounts["credentials"]
    assert env["MCNOTIFY_CONFIG"]["value"] == mounts["config"] + "/config.toml"
    assert "/tmp" in mounts.values()  # the subscriber CSV, with a read-only root
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "mcnotify-credentials"
    assert volumes["config"]["configMap"]["name"] == "mcnotify-config"
    assert volumes["credentials"]["emptyDir"]["medium"] == "Memory"
    # The copy the init container makes is private (mcnotify warns about a secret its group can read).
    (init,) = pod["initContainers"]
    assert "install -m 0600" in init["command"][-1] and mounts["credentials"] in init["command"][-1]
    secrets = {s["metadata"]["name"]: s for s in manifests["secret.example.yaml"]}
    assert set(secrets) == {"mcnotify-credentials", "mcnotify-state"}
    for secret in secrets.values():
        for value in secret["stringData"].values():
            assert "REPLACE-WITH" in value  # placeholders, never a real secret
    patch = one(manifests, "sqlite/deployment-patch.yaml")["spec"]
    assert patch["replicas"] == 1 and patch["strategy"]["type"] == "Recreate"


def test_the_configmaps_config_parses(manifests: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    data = one(manifests, "base/configmap.yaml")["data"]
    raw = tomllib.loads(data["config.toml"])
    credentials = manifests["secret.example.yaml"][0]
    # Every credential the config names is a key of the Secret; written as the init container leaves them.
    named = set(re.findall(r'^[a-z_]+ = "credential:([a-z_]+)"', data["config.toml"], re.MULTILINE))
    assert named and named <= set(credentials["stringData"])
    for name in credentials["stringData"]:
        (tmp_path / name).write_text("x")
        (tmp_path / name).chmod(0o600)
    pod = one(manifests, "base/deployment.yaml")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    env["MCNOTIFY_CREDENTIALS_DIR"] = str(tmp_path)
    settings = parse(raw, environ=env)  # the sqlite overlay: the state at the built-in path
    assert settings.state.path == "/var/lib/mcnotify/state.db"
    assert settings.sftp.known_hosts == "/etc/mcnotify/known_hosts" and "known_hosts" in data
    assert settings.sftp.key_file == str(tmp_path / "sftp_key")
    if "url" not in SCHEMA["state"]:
        pytest.skip("!!! [state] url is not in this mcnotify yet (issue 13): the MariaDB target NOT parsed")
    url = manifests["secret.example.yaml"][1]["stringData"]["url"]
    parse(raw, environ={**env, "MCNOTIFY_STATE_URL": url})


def test_the_docs_name_every_file_and_say_what_was_not_built() -> None:
    docs = " ".join((ROOT / "deploy" / "README.md").read_text().split())
    assert "has **not** been built" in docs and "`docker info`" in docs
    for path in sorted(KUBE.rglob("*.yaml")):
        assert path.name in docs or f"{path.parent.name}/" in docs, path
    for needle in ("replicas: 1", "strategy: Recreate", "MCNOTIFY_STATE_URL", "mcnotify-liveness", "Several replicas"):
        assert needle in docs, needle
    assert "](deploy/README.md)" in (ROOT / "README.md").read_text()
