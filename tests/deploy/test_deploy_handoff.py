"""The handoff overlay (issue 23): Redis as the session store, reachable only from the cellserve
pods, its password from a Secret both sides mount, the settings the server accepts, a drain with
room to write the sessions; and the Redis pod's own start script and probe, run with a real
redis-server and driven by the server's RedisSessionStore."""

from __future__ import annotations

import asyncio
import copy
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cellserve.config import Settings
from cellserve.handoff import RedisSessionStore

from . import k8s
from .k8s import Doc, container, only, overlays

HANDOFF = "handoff"
EXTERNAL = "handoff-external"
REDIS = "cellserve-redis"
STORE_OVERLAYS = [HANDOFF, EXTERNAL]


def _settings(docs: list[Doc]) -> Settings:
    settings, problems = k8s.effective_settings(docs)
    assert problems == []
    assert settings is not None
    return settings


def test_only_the_handoff_overlays_turn_the_store_on(rendered: dict[str, list[Doc]]) -> None:
    assert set(STORE_OVERLAYS) <= set(overlays())
    for overlay, docs in rendered.items():
        assert k8s.all_problems(docs) == [], overlay
        settings = _settings(docs)
        has_redis = any(d["metadata"]["name"] == REDIS for d in docs)
        assert (settings.session_store is not None) == (overlay in STORE_OVERLAYS), overlay
        assert has_redis == (overlay == HANDOFF), overlay


@pytest.mark.parametrize("overlay", STORE_OVERLAYS)
def test_the_store_settings(rendered: dict[str, list[Doc]], overlay: str) -> None:
    settings = _settings(rendered[overlay])
    assert settings.session_store is not None
    url = settings.session_store.get_secret_value()
    if overlay == HANDOFF:
        assert url == "redis://cellserve-redis:6379/0"
    else:  # TLS, with the provider's CA
        assert url.startswith("rediss://") and "ssl_ca_certs=/etc/cellserve/redis-ca/" in url
    assert settings.session_store_sync_s > 0, "a crashed pod's idle sessions are in the store"
    # The drain also writes every live session to Redis: more time than the plain gpu overlay.
    assert settings.drain_grace_s > _settings(rendered["gpu"]).drain_grace_s
    # The password from the Secret both sides mount (the in-cluster Redis reads it too).
    assert settings.session_store_password_file is not None
    source = k8s.secret_file_source(
        only(rendered[overlay], "Deployment"), "cellserve", str(settings.session_store_password_file)
    )
    assert source == ("cellserve-redis", "password")
    assert k8s.check_handoff(rendered[overlay], settings) == []


def test_redis_is_reachable_only_from_cellserve_pods(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[HANDOFF]
    assert k8s.check_handoff(docs, _settings(docs)) == []
    policy = only(docs, "NetworkPolicy", REDIS)["spec"]
    assert policy["egress"] == [] and [r["from"] for r in policy["ingress"]] == [
        [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "cellserve"}}}]
    ]


def test_the_redis_pod_reads_the_same_secret(rendered: dict[str, list[Doc]]) -> None:
    redis = only(rendered[HANDOFF], "StatefulSet", REDIS)
    assert k8s.secret_file_source(redis, "redis", "/etc/redis/auth/password") == ("cellserve-redis", "password")
    assert not [d for d in rendered[HANDOFF] if d["kind"] == "Secret"], "created by kubectl, never committed"
    text = str(container(redis, "redis"))
    assert "requirepass" not in text, "a password in an argument shows in the process list"


def test_the_redis_pod_is_hardened(rendered: dict[str, list[Doc]]) -> None:
    redis = only(rendered[HANDOFF], "StatefulSet", REDIS)
    assert k8s.check_pod_security(redis, "redis", writable=["/data"]) == []
    spec = redis["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] >= 10000  # checkov CKV_K8S_40: no clash with a host uid
    c = container(redis, "redis")
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert "readinessProbe" in c and "livenessProbe" in c
    args = c["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no", "persistence off"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction", "a full store fails a write, evicts nothing"


def _cm(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = only(docs, "ConfigMap")["data"]
    return data


def _redis_policy(docs: list[Doc]) -> Doc:
    spec: Doc = only(docs, "NetworkPolicy", REDIS)["spec"]
    return spec


def _redis_volume(docs: list[Doc], name: str) -> Doc:
    volumes = only(docs, "StatefulSet", REDIS)["spec"]["template"]["spec"]["volumes"]
    found: Doc = next(v for v in volumes if v["name"] == name)
    return found


MUTATIONS: dict[str, Callable[[list[Doc]], object]] = {
    "redis open to all": lambda d: _redis_policy(d)["ingress"][0].pop("from"),
    "redis open to a namespace": lambda d: _redis_policy(d)["ingress"][0]["from"].append(
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}
    ),
    "redis open to every pod": lambda d: _redis_policy(d)["ingress"][0]["from"][0].update(podSelector={}),
    "redis on every port": lambda d: _redis_policy(d)["ingress"][0].pop("ports"),
    "redis may connect out": lambda d: _redis_policy(d).update(egress=[{}]),
    "no redis policy": lambda d: d.remove(only(d, "NetworkPolicy", REDIS)),
    "a namespace-wide allow": lambda d: d.append(
        {"kind": "NetworkPolicy", "metadata": {"name": "allow-all"}, "spec": {"podSelector": {}, "ingress": [{}]}}
    ),
    "cellserve cannot reach redis": lambda d: only(d, "NetworkPolicy", "cellserve")["spec"]["egress"].pop(0),
    "cellserve without dns": lambda d: only(d, "NetworkPolicy", "cellserve")["spec"]["egress"].pop(1),
    "password in the url": lambda d: _cm(d).update(CELLSERVE_SESSION_STORE="redis://:hunter2@cellserve-redis:6379/0"),
    "another host": lambda d: _cm(d).update(CELLSERVE_SESSION_STORE="redis://redis:6379/0"),
    "another port": lambda d: _cm(d).update(CELLSERVE_SESSION_STORE="redis://cellserve-redis:6380/0"),
    "password file outside the secret": lambda d: _cm(d).update(CELLSERVE_SESSION_STORE_PASSWORD_FILE="/tmp/password"),
    "no password file": lambda d: _cm(d).pop("CELLSERVE_SESSION_STORE_PASSWORD_FILE"),
    "redis reads another secret": lambda d: _redis_volume(d, "password")["secret"].update(secretName="other"),
    "two redis pods": lambda d: only(d, "StatefulSet", REDIS)["spec"].update(replicas=2),
    "redis writable root": lambda d: container(only(d, "StatefulSet", REDIS), "redis")["securityContext"].update(
        readOnlyRootFilesystem=False
    ),
    "redis without /data": lambda d: _redis_volume(d, "data").pop("emptyDir"),
    "redis keeps capabilities": lambda d: container(only(d, "StatefulSet", REDIS), "redis")["securityContext"].pop(
        "capabilities"
    ),
    "no time to write the sessions": lambda d: only(d, "Deployment")["spec"]["template"]["spec"].update(
        terminationGracePeriodSeconds=45
    ),
    "committed password": lambda d: d.append(
        {"kind": "Secret", "metadata": {"name": "cellserve-redis"}, "stringData": {"password": "x"}}
    ),
}


EXTERNAL_URL = "rediss://redis.example.com:6380/0?ssl_ca_certs="

EXTERNAL_MUTATIONS: dict[str, Callable[[list[Doc]], object]] = {
    "external unreachable": lambda d: only(d, "NetworkPolicy", "cellserve")["spec"]["egress"].pop(0),
    "external on another port": lambda d: _cm(d).update(CELLSERVE_SESSION_STORE=EXTERNAL_URL.replace("6380", "6379")),
    "external to every pod": lambda d: only(d, "NetworkPolicy", "cellserve")["spec"]["egress"][0].update(
        to=[{"podSelector": {}}]
    ),
    "external without dns": lambda d: only(d, "NetworkPolicy", "cellserve")["spec"]["egress"].pop(1),
    "ca not mounted": lambda d: _cm(d).update(CELLSERVE_SESSION_STORE=EXTERNAL_URL + "/etc/ssl/other/ca.crt"),
    "client key not a secret": lambda d: _cm(d).update(
        CELLSERVE_SESSION_STORE=EXTERNAL_URL + "/etc/cellserve/redis-ca/ca.crt&ssl_keyfile=/etc/cellserve/redis-ca/k"
    ),
    "external password in the url": lambda d: _cm(d).update(
        CELLSERVE_SESSION_STORE="rediss://:hunter2@redis.example.com:6380/0"
    ),
}
BROKEN = [(HANDOFF, m) for m in sorted(MUTATIONS)] + [(EXTERNAL, m) for m in sorted(EXTERNAL_MUTATIONS)]


@pytest.mark.parametrize(("overlay", "mutation"), BROKEN)
def test_a_broken_handoff_overlay_is_caught(rendered: dict[str, list[Doc]], overlay: str, mutation: str) -> None:
    docs = copy.deepcopy(rendered[overlay])
    assert k8s.all_problems(docs) == []
    {**MUTATIONS, **EXTERNAL_MUTATIONS}[mutation](docs)
    assert k8s.all_problems(docs), f"{mutation}: not caught"


# --- the Redis pod's start script and probe, with a real redis-server ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedisPod:
    """The Redis container of the overlay run here: its command, args and probe, each mount
    path mapped to a folder of ``root`` (the Secret's items written there), its port a free one."""

    def __init__(self, statefulset: Doc, root: Path, password: str) -> None:
        self.c = container(statefulset, "redis")
        self.port = _free_port()
        volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
        self.paths: dict[str, str] = {}
        for mount in self.c["volumeMounts"]:
            local = root / mount["name"]
            local.mkdir(parents=True)
            self.paths[mount["mountPath"]] = str(local)
            for item in volumes[mount["name"]].get("secret", {}).get("items", []):
                (local / item["path"]).write_text(password)

    def local(self, text: str) -> str:
        for path, local in self.paths.items():
            text = text.replace(path, local)
        return text.replace("6379", str(self.port))

    def argv(self) -> list[str]:
        return [self.local(a) for a in self.c["command"] + self.c["args"]] + ["--bind", "127.0.0.1"]

    def probe(self, kind: str) -> int:
        command = [self.local(a) for a in self.c[kind]["exec"]["command"]]
        return subprocess.run(command, capture_output=True, timeout=30).returncode


@pytest.fixture
def redis_pod(rendered: dict[str, list[Doc]], tmp_path: Path) -> Iterator[tuple[LocalRedisPod, str]]:
    for tool in ("redis-server", "redis-cli", "sha256sum"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs redis-server)")
    password = secrets.token_hex(32)
    pod = LocalRedisPod(only(rendered[HANDOFF], "StatefulSet", REDIS), tmp_path, password)
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(pod.argv(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while pod.probe("readinessProbe") != 0:
            assert proc.poll() is None, f"redis exited: {log.read_text()}"
            assert time.monotonic() < deadline, "the readiness probe never passed"
            time.sleep(0.1)
        yield pod, password
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_the_redis_pod_serves_the_store_and_nothing_else(redis_pod: tuple[LocalRedisPod, str]) -> None:
    import redis
    import redis.exceptions

    pod, password = redis_pod
    assert pod.probe("livenessProbe") == 0

    async def the_store() -> None:
        # The server's own store, with the password appended to the URL as the server does it.
        store = RedisSessionStore(f"redis://:{password}@127.0.0.1:{pod.port}/0", "k8s-test")
        try:
            assert await store.ping()
            key = store.key("acme", "0123456789abcdef0123456789abcdef")
            loop = asyncio.get_running_loop()
            assert await store.put_many([(key, b"sealed", time.time() + 60)], loop.time() + 5) == 1
            assert await store.take(key) == b"sealed"
            assert await store.take(key) is None
            assert store.stats.put_failures == store.stats.take_failures == 0
        finally:
            await store.close()

    asyncio.run(the_store())

    client = redis.Redis(host="127.0.0.1", port=pod.port, password=password)
    try:
        for command in (("CONFIG", "GET", "*"), ("FLUSHALL",), ("KEYS", "*"), ("SHUTDOWN",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("not-cellserve:x", b"1")  # outside the key space
    finally:
        client.close()
    for wrong in (None, "wrong"):
        anonymous = redis.Redis(host="127.0.0.1", port=pod.port, password=wrong)
        try:
            with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
                anonymous.set("cellserve:x", b"1")
        finally:
            anonymous.close()


def test_the_probe_fails_with_a_wrong_password(redis_pod: tuple[LocalRedisPod, str]) -> None:
    pod, _ = redis_pod
    (Path(pod.paths["/etc/redis/auth"]) / "password").write_text("wrong")
    assert pod.probe("readinessProbe") != 0


def test_redis_refuses_to_start_without_a_password(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    pod = LocalRedisPod(only(rendered[HANDOFF], "StatefulSet", REDIS), tmp_path, password="")
    out = subprocess.run(pod.argv(), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "no password" in out.stderr
