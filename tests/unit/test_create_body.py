"""tasks.core.create_body: the create request a recreate sends, from real `docker inspect` output
of this machine's engine (tests/unit/data/create_body/, recorded by tests/unit/record_create_body.py),
and the shell that sends it, run for real against a unix-socket server standing in for the engine."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tasks.core.container_spec import MANAGED_ENV_LABEL, ContainerSpec, diff_spec, spec_from_inspect
from tasks.core.create_body import (
    ENGINE_COMMAND,
    CreateBodyError,
    Endpoint,
    Engine,
    create_command,
    create_request,
    created_id,
    image_changed,
    network_connect_args,
    parse_engine,
)

DATA = Path(__file__).parent / "data" / "create_body"
GIB, MIB = 1 << 30, 1 << 20


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


RICH = load("container-rich")
LEGACY = load("container-legacy")
IMAGE2, IMAGE3 = load("image-mlflow2"), load("image-mlflow3")
FRONT, BACK = "qtrec-front", "qtrec-back"


def same_spec(container: dict, **changes) -> ContainerSpec:
    """The spec that matches ``container`` as the deploy reads it (so only ``changes`` differ)."""
    actual = spec_from_inspect(container)
    spec = ContainerSpec(
        name=actual.name, image=actual.image, command=actual.command, env={}, labels={},
        memory=actual.memory, memory_reservation=actual.memory_reservation,
        restart_policy=actual.restart_policy, ports=actual.ports, networks=actual.networks,
    )  # fmt: skip
    return replace(spec, **changes)


def build(container=RICH, spec=None, old_image=None, new_image=IMAGE2):
    return create_request(container, spec or same_spec(container), old_image, new_image)


def env_of(body: dict) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in body["Env"])


# -- nothing managed changes: the body is the old configuration --------------------------------------


def test_an_unchanged_spec_gives_back_the_old_configuration():
    request = build()
    body = request.body
    config = {k: v for k, v in RICH["Config"].items() if k not in ("Hostname", "Domainname")}
    assert {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")} == config
    # The one addition: the anonymous volume at /scratch, mounted again by name (its data stays).
    assert {k: v for k, v in body["HostConfig"].items() if k != "Binds"} == {
        k: v for k, v in RICH["HostConfig"].items() if k != "Binds"}
    assert request.name == "qtrec-mlflow"


def test_every_user_setting_is_in_the_body():
    host = build().body["HostConfig"]
    assert host["Binds"][:2] == RICH["HostConfig"]["Binds"] == ["qtrec-data:/data", host["Binds"][1]]
    assert host["Binds"][1].endswith(":/config:ro")
    assert host["Tmpfs"] == {"/tmp/cache": "size=16m"}
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "2", "max-size": "1m"}}
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 8192}]
    assert sorted(host["CapDrop"]) == ["CAP_MKNOD", "CAP_NET_RAW"]
    body = build().body
    assert body["User"] == "0:0" and body["WorkingDir"] == "/data"
    assert body["Healthcheck"]["Interval"] == 7_000_000_000 and body["Healthcheck"]["Retries"] == 5
    assert body["Labels"]["team"] == "research"


def test_runtime_fields_are_left_to_the_engine():
    body = build().body
    assert "Hostname" not in body  # the old container's short id
    assert "Domainname" not in body  # empty
    for key in ("Id", "State", "NetworkSettings", "Mounts", "Name", "Created", "GraphDriver", "LogPath"):
        assert key not in body


def test_one_endpoint_at_create_without_the_engines_short_id_alias():
    request = build()
    short_id = RICH["Id"][:12]
    assert short_id in RICH["NetworkSettings"]["Networks"][FRONT]["Aliases"]  # what API 1.41 adds
    assert request.body["NetworkingConfig"] == {"EndpointsConfig": {FRONT: {"Aliases": ["tracking", "mlflow"]}}}
    assert request.extra_networks == (Endpoint(BACK, aliases=("mlflow-back", "tracking-back")),)


def test_user_hostname_domainname_and_legacy_links_are_kept():
    body = build(LEGACY).body
    assert body["Hostname"] == "legacy" and body["Domainname"] == "lab.example"
    # inspect says /target:/name/alias; create wants target:alias
    assert LEGACY["HostConfig"]["Links"] == ["/qtrec-db:/qtrec-legacy/db"]
    assert body["HostConfig"]["Links"] == ["qtrec-db:db"]
    assert body["NetworkingConfig"] == {"EndpointsConfig": {}}  # the default bridge: nothing to set


# -- managed fields ------------------------------------------------------------------------------------


def test_command_image_and_entrypoint_come_from_the_spec():
    command = ("mlflow", "server", "--workers", "2")
    body = build(spec=same_spec(RICH, command=command)).body
    assert body["Cmd"] == list(command)
    assert body["Image"] == RICH["Config"]["Image"]
    assert body["Entrypoint"] is None  # the image's own
    body = build(spec=same_spec(RICH, entrypoint=("tini", "--"))).body
    assert body["Entrypoint"] == ["tini", "--"]
    assert build(spec=same_spec(RICH, command=())).body["Cmd"] is None  # the image's own


def test_env_set_in_place_new_keys_appended_and_the_label_kept_up_to_date():
    spec = same_spec(RICH, env={"TZ": "Europe/Paris", "GUNICORN_CMD_ARGS": ""})
    body = build(spec=spec).body
    assert body["Env"][:2] == ["MLFLOW_EXPERIMENT_NAME=placeholder", "TZ=Europe/Paris"]
    assert body["Env"][-1] == "GUNICORN_CMD_ARGS="
    assert env_of(body)["PATH"].startswith("/opt/mlflow/bin")
    assert body["Labels"][MANAGED_ENV_LABEL] == "GUNICORN_CMD_ARGS,TZ"


def test_env_keys_no_longer_managed_go_and_no_env_drops_the_label():
    old = copy.deepcopy(RICH)
    old["Config"]["Labels"][MANAGED_ENV_LABEL] = "MLFLOW_EXPERIMENT_NAME,TZ"
    body = build(old, same_spec(old, env={"TZ": "UTC"})).body
    assert "MLFLOW_EXPERIMENT_NAME" not in env_of(body)
    assert body["Labels"][MANAGED_ENV_LABEL] == "TZ"
    body = build(old, same_spec(old)).body
    assert "TZ" not in env_of(body) and MANAGED_ENV_LABEL not in body["Labels"]
    assert "PATH" in env_of(body)  # not ours: kept


def test_labels_set_others_kept():
    body = build(spec=same_spec(RICH, labels={"tier": "gold", "io.quantlab.mlflow-version": "2.9.2"})).body
    assert body["Labels"] == {"quantlab.recipe": "mlflow2", "team": "research", "tier": "gold",
                              "io.quantlab.mlflow-version": "2.9.2"}


def test_memory_and_docker_runs_swap_default():
    # `docker run --memory 512m` reads back MemorySwap 2 x 512m on this engine (swap accounted).
    assert RICH["HostConfig"]["Memory"] == 512 * MIB and RICH["HostConfig"]["MemorySwap"] == GIB
    host = build(spec=same_spec(RICH, memory=GIB, memory_reservation=512 * MIB)).body["HostConfig"]
    assert (host["Memory"], host["MemoryReservation"], host["MemorySwap"]) == (GIB, 512 * MIB, 0)
    host = build(spec=same_spec(RICH, memory_reservation=256 * MIB)).body["HostConfig"]
    assert host["MemorySwap"] == GIB  # the limit is unchanged: so is its swap
    host = build(spec=same_spec(RICH, memory=GIB, memory_swap=-1)).body["HostConfig"]
    assert host["MemorySwap"] == -1
    host = build(spec=same_spec(RICH, memory=0)).body["HostConfig"]
    assert (host["Memory"], host["MemorySwap"]) == (0, 0)


def test_restart_policy_object_kept_when_equal_built_when_not():
    assert build().body["HostConfig"]["RestartPolicy"] is RICH["HostConfig"]["RestartPolicy"]
    host = build(spec=same_spec(RICH, restart_policy="on-failure:3")).body["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}


def test_init_set_when_the_spec_asks_and_kept_when_it_already_means_the_same():
    """HostConfig.Init as `docker run --init` sets it; null means off, so an off spec keeps null."""
    assert RICH["HostConfig"].get("Init") is None
    assert build(spec=same_spec(RICH, init=True)).body["HostConfig"]["Init"] is True
    assert build(spec=same_spec(RICH, init=False)).body["HostConfig"].get("Init") is None
    assert build().body["HostConfig"].get("Init") is None
    with_init = {**RICH, "HostConfig": {**RICH["HostConfig"], "Init": True}}
    assert build(with_init).body["HostConfig"]["Init"] is True  # not managed: kept
    assert build(with_init, spec=same_spec(with_init, init=False)).body["HostConfig"]["Init"] is False
    spec = same_spec(RICH, init=True)
    body = build(spec=spec).body
    stored = {**RICH, "HostConfig": body["HostConfig"]}
    assert not diff_spec(spec, spec_from_inspect(stored)).changed


def test_ports_rebuilt_from_the_spec_and_exposed_ports_follow():
    spec = same_spec(RICH, ports=("127.0.0.1:28951:5001/tcp", "[::1]:28952:5000/udp", "8080:80/tcp"))
    body = build(spec=spec).body
    assert body["HostConfig"]["PortBindings"] == {
        "5001/tcp": [{"HostIp": "127.0.0.1", "HostPort": "28951"}],
        "5000/udp": [{"HostIp": "::1", "HostPort": "28952"}],
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
    }
    # 5000/tcp was exposed by the image and by the old binding; the image's comes back by itself.
    assert body["ExposedPorts"] == {"5001/tcp": {}, "5000/udp": {}, "80/tcp": {}}
    assert build(spec=same_spec(RICH, ports=())).body["HostConfig"]["PortBindings"] == {}


def test_networks_the_spec_wants_are_connected():
    request = build(spec=same_spec(RICH, networks=(FRONT, BACK, "qtrec-extra")))
    assert [e.network for e in request.extra_networks] == [BACK, "qtrec-extra"]
    assert request.extra_networks[1] == Endpoint("qtrec-extra")


def test_a_mode_network_the_container_left_is_not_joined_again():
    # `docker network disconnect` leaves NetworkMode naming a network the container is not on;
    # creating with it would attach it again: the mode moves to a network the container is on.
    old = copy.deepcopy(RICH)
    old["HostConfig"]["NetworkMode"] = "default"
    request = build(old)
    assert request.body["HostConfig"]["NetworkMode"] == BACK
    assert list(request.body["NetworkingConfig"]["EndpointsConfig"]) == [BACK]
    assert [e.network for e in request.extra_networks] == [FRONT]
    # The mode's network is one the spec wants and the container is not on yet: created on it.
    old["HostConfig"]["NetworkMode"] = "qtrec-extra"
    request = build(old, same_spec(old, networks=(FRONT, "qtrec-extra")))
    assert request.body["HostConfig"]["NetworkMode"] == "qtrec-extra"
    assert [e.network for e in request.extra_networks] == [BACK, FRONT]


def test_host_network_mode_cannot_join_networks():
    old = copy.deepcopy(LEGACY)
    old["HostConfig"]["NetworkMode"] = "host"
    old["NetworkSettings"]["Networks"] = {"host": {"Aliases": None, "NetworkID": "abc"}}
    assert build(old).body["NetworkingConfig"] == {"EndpointsConfig": {}}
    with pytest.raises(CreateBodyError, match="network mode host cannot join networks qtrec-front"):
        build(old, same_spec(old, networks=(FRONT,)))


def test_user_set_endpoint_addresses_links_and_driver_options_are_kept():
    old = copy.deepcopy(RICH)
    back = old["NetworkSettings"]["Networks"][BACK]
    back.update(IPAMConfig={"IPv4Address": "172.30.9.9", "IPv6Address": ""}, Links=["qtrec-db:db"],
                DriverOpts={"com.example.opt": "1"})
    old["NetworkSettings"]["Networks"][FRONT]["IPAMConfig"] = {"IPv4Address": "172.30.8.8"}
    request = build(old)
    assert request.body["NetworkingConfig"]["EndpointsConfig"][FRONT] == {
        "Aliases": ["tracking", "mlflow"], "IPAMConfig": {"IPv4Address": "172.30.8.8"}}
    assert request.extra_networks == (Endpoint(BACK, aliases=("mlflow-back", "tracking-back"),
                                               ipv4="172.30.9.9", links=("qtrec-db:db",),
                                               driver_opts=(("com.example.opt", "1"),)),)


def test_anonymous_volumes_are_mounted_again_by_name():
    anonymous = next(m for m in RICH["Mounts"] if m["Destination"] == "/scratch")
    binds = build().body["HostConfig"]["Binds"]
    assert binds == [*RICH["HostConfig"]["Binds"], f"{anonymous['Name']}:/scratch"]
    # A volume at a path the new container no longer declares is not carried.
    old = copy.deepcopy(RICH)
    old["Config"]["Volumes"] = None
    assert build(old).body["HostConfig"]["Binds"] == RICH["HostConfig"]["Binds"]


# -- a new image: the old image's defaults give way to the new one's -----------------------------------


def test_a_new_image_drops_what_equals_the_old_images_defaults():
    assert image_changed(RICH, IMAGE3) and not image_changed(RICH, IMAGE2)
    spec = same_spec(RICH, image="quantlab/mlflow3:next")
    body = build(spec=spec, old_image=IMAGE2, new_image=IMAGE3).body
    assert env_of(body) == {"MLFLOW_EXPERIMENT_NAME": "placeholder", "TZ": "UTC"}  # PATH, LANG... go
    assert body["Labels"] == {"team": "research", "tier": "tracking"}  # quantlab.recipe=mlflow2 goes
    assert body["ExposedPorts"] == {"5000/tcp": {}}  # still published
    # The user's healthcheck stays; the fields the old image filled in give way to the new one's.
    assert body["Healthcheck"] == {"Interval": 7_000_000_000, "Retries": 5}
    assert body["User"] == "0:0" and body["WorkingDir"] == "/data"  # the image sets neither
    assert body["Image"] == "quantlab/mlflow3:next"


def test_a_new_image_drops_workdir_user_stop_signal_and_volumes_equal_to_the_old_images():
    old_image = copy.deepcopy(IMAGE2)
    old_image["Config"].update(WorkingDir="/data", User="mlflow", StopSignal="SIGINT",
                               Volumes={"/scratch": {}})
    old = copy.deepcopy(RICH)
    old["Config"].update(User="mlflow", StopSignal="SIGINT")
    body = build(old, same_spec(old), old_image=old_image, new_image=IMAGE3).body
    assert (body["WorkingDir"], body["User"], body["StopSignal"], body["Volumes"]) == ("", "", "", None)
    # The anonymous volume at /scratch is not declared by the new image: not carried over.
    assert body["HostConfig"]["Binds"] == RICH["HostConfig"]["Binds"]


def test_a_healthcheck_equal_to_the_old_images_goes_entirely():
    old = copy.deepcopy(RICH)
    old["Config"]["Healthcheck"] = IMAGE2["Config"]["Healthcheck"]
    body = build(old, same_spec(old), old_image=IMAGE2, new_image=IMAGE3).body
    assert body["Healthcheck"] is None


def test_an_unreadable_old_image_is_refused_not_guessed():
    with pytest.raises(CreateBodyError, match="cannot be read") as caught:
        build(spec=same_spec(RICH, env={"PGPASSWORD": "s3cret-value"}), old_image=None, new_image=IMAGE3)
    assert "s3cret-value" not in str(caught.value)


def test_the_body_reads_back_as_the_spec():
    """What the engine would store (the body's Config/HostConfig) diffs clean against the spec."""
    spec = same_spec(RICH, command=("mlflow", "server", "--workers", "2"), memory=GIB,
                     memory_reservation=512 * MIB, env={"TZ": "UTC", "GUNICORN_CMD_ARGS": ""},
                     labels={"io.quantlab.mlflow-version": "2.9.2"}, restart_policy="always")
    body = build(spec=spec).body
    stored = {**RICH, "Config": {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")},
              "HostConfig": body["HostConfig"]}
    assert not diff_spec(spec, spec_from_inspect(stored)).changed


# -- sending it --------------------------------------------------------------------------------------


def test_commands_text():
    engine = Engine("/var/run/docker.sock", "curl")
    assert create_command(engine, "/tmp/d/body.json", "/tmp/d/answer.json", "quant-mlflow") == (
        "code=$(curl --unix-socket /var/run/docker.sock -sS -X POST -H 'Content-Type: application/json' "
        "--data-binary @/tmp/d/body.json -o /tmp/d/answer.json -w '%{http_code}' "
        "'http://localhost/containers/create?name=quant-mlflow') || exit 1; "
        'if [ "$code" = 201 ]; then cat /tmp/d/answer.json; '
        'else echo "the engine answered HTTP $code: $(head -c 600 /tmp/d/answer.json 2>/dev/null)" >&2; '
        "exit 1; fi"
    )
    endpoint = Endpoint("net b", aliases=("a1", "a2"), ipv4="10.0.0.9", links=("db:db",),
                        driver_opts=(("k", "v"),))
    assert network_connect_args(endpoint, "quant-mlflow") == [
        "docker", "network", "connect", "--alias", "a1", "--alias", "a2", "--ip", "10.0.0.9",
        "--link", "db:db", "--driver-opt", "k=v", "net b", "quant-mlflow"]
    assert created_id('{"Id":"abc","Warnings":["swap"]}\n') == ("abc", ["swap"])
    assert parse_engine("engine python3 /run/docker.sock\n") == Engine("/run/docker.sock", "python3")
    with pytest.raises(CreateBodyError):
        parse_engine("something else")


class FakeEngine(BaseHTTPRequestHandler):
    """The engine's create endpoint on a unix socket: 201 with an id, or 409 on a taken name."""

    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        FakeEngine.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        if "name=taken" in self.path:
            self.answer(409, {"message": 'Conflict. The container name "/taken" is already in use'})
        else:
            self.answer(201, {"Id": "4f1c0ffee", "Warnings": []})

    def answer(self, status, data):
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self):
        self.socket.bind(self.server_address)

    def get_request(self):
        request, _ = self.socket.accept()
        return request, ("local", 0)


@pytest.fixture
def engine_socket(tmp_path):
    path = str(tmp_path / "engine.sock")
    server = UnixHTTPServer(path, FakeEngine)
    # polls every 0.05 s (not 0.5): shutdown() at teardown waits for the next poll
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    FakeEngine.received = []
    yield path
    server.shutdown()
    server.server_close()


def sh(command: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], **env})


@pytest.mark.parametrize("client", ["curl", "python3"])
def test_the_create_command_posts_the_file_and_checks_the_answer(engine_socket, tmp_path, client):
    body = tmp_path / "body.json"
    body.write_text(build().body_json())
    engine = Engine(engine_socket, client)
    done = sh(create_command(engine, str(body), str(tmp_path / "answer.json"), "qtrec-mlflow"))
    assert done.returncode == 0, done.stderr
    assert created_id(done.stdout) == ("4f1c0ffee", [])
    path, content_type, sent = FakeEngine.received[-1]
    assert path == "/containers/create?name=qtrec-mlflow" and content_type == "application/json"
    assert sent == json.loads(build().body_json())
    refused = sh(create_command(engine, str(body), str(tmp_path / "answer.json"), "taken"))
    assert refused.returncode == 1
    assert "the engine answered HTTP 409" in refused.stderr and "is already in use" in refused.stderr


def test_engine_command_finds_the_socket_and_refuses_tcp_and_ssh(engine_socket, tmp_path):
    found = sh(ENGINE_COMMAND, DOCKER_HOST=f"unix://{engine_socket}")
    assert found.returncode == 0, found.stderr
    assert parse_engine(found.stdout) == Engine(engine_socket, "curl")
    for host in ("tcp://127.0.0.1:2375", "ssh://ops@example.invalid"):
        refused = sh(ENGINE_COMMAND, DOCKER_HOST=host)
        assert refused.returncode == 2
        assert "not a unix socket" in refused.stderr and "nothing was changed" in refused.stderr
        assert "example.invalid" not in refused.stderr and "2375" not in refused.stderr
    missing = sh(ENGINE_COMMAND, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    assert missing.returncode == 2 and "is not a unix socket" in missing.stderr


def test_engine_command_falls_back_to_python3_then_says_what_is_missing(engine_socket, tmp_path):
    only_python = tmp_path / "bin"
    only_python.mkdir()
    python3 = subprocess.run(["sh", "-c", "command -v python3"], capture_output=True, text=True).stdout.strip()
    (only_python / "python3").symlink_to(os.path.realpath(python3))
    found = subprocess.run(["/bin/sh", "-c", ENGINE_COMMAND], capture_output=True, text=True,
                           env={"PATH": str(only_python), "DOCKER_HOST": f"unix://{engine_socket}"})
    assert parse_engine(found.stdout) == Engine(engine_socket, "python3")
    empty = tmp_path / "empty"
    empty.mkdir()
    none = subprocess.run(["/bin/sh", "-c", ENGINE_COMMAND], capture_output=True, text=True,
                          env={"PATH": str(empty), "DOCKER_HOST": f"unix://{engine_socket}"})
    assert none.returncode == 2 and "neither curl nor python3" in none.stderr


# -- a spec made from the redacted fact (the backend fix): digests stand for the old values ---------


def _with_env(container: dict, *entries: str) -> dict:
    data = copy.deepcopy(container)
    data["Config"]["Env"] = [*data["Config"]["Env"], *entries]
    return data


def test_a_digest_in_the_spec_keeps_the_old_secret_value():
    from tasks.core.redact import redact_env

    container = _with_env(RICH, "PGPASSWORD=real-old-secret")
    name = spec_from_inspect(container).name
    redacted = dict(e.split("=", 1) for e in redact_env(container["Config"]["Env"], name))
    assert redacted["PGPASSWORD"].startswith("***sha256:")
    body = build(container, same_spec(container, env={"PGPASSWORD": redacted["PGPASSWORD"]})).body
    assert env_of(body)["PGPASSWORD"] == "real-old-secret"
    assert "***sha256:" not in json.dumps(body)


def test_a_digest_that_no_longer_matches_refuses():
    from tasks.core.redact import redacted_value

    container = _with_env(RICH, "PGPASSWORD=changed-since-the-plan")
    name = spec_from_inspect(container).name
    stale = redacted_value(name, "PGPASSWORD", "what-the-plan-saw")
    with pytest.raises(CreateBodyError, match="changed since the plan") as raised:
        build(container, same_spec(container, env={"PGPASSWORD": stale}))
    assert "changed-since" not in str(raised.value) and "what-the-plan" not in str(raised.value)
    with pytest.raises(CreateBodyError, match="gone since the plan"):
        build(RICH, same_spec(RICH, env={"NOT_THERE": stale}))
