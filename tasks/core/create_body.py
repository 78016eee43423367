"""
A recreate that keeps what it does not manage: the Engine API create request for the new
container, built from the old container's ``docker inspect`` and changed only in managed fields.
No I/O: the operation (tasks/operations/docker.py) reads the inspects, uploads the body and runs
the commands built here.

Long because the rules below are one contract with the engine: the body, its networks, and the
shell that sends it live together so a reader checks each rule against the code next to it.

The body is the old ``Config`` at top level, its ``HostConfig`` and a ``NetworkingConfig`` with one
endpoint (API 1.41 attaches one network at create; the others are ``docker network connect``-ed
before start). Every key is copied, including ones nobody listed here, except:

Managed (from the ContainerSpec, as ``docker_run_args`` sets them, so ``diff_spec`` reads back
exactly what it asked for):
- ``Image``, ``Cmd`` (empty: the image's), ``Entrypoint`` (the spec's, else null: the image's);
- ``Env``: the spec's env set in place (new keys appended); keys listed in the managed-env label
  but no longer in the spec removed; the label ``MANAGED_ENV_LABEL`` rewritten (dropped when the
  spec has no env), as ``docker_run_args`` writes it. A spec value that is a digest (a spec made
  from the redacted fact, tasks/core/redact.py) keeps the old entry when the old entry has that
  digest, and refuses when it does not (the container changed since the plan);
- ``Labels``: the spec's labels set; others kept;
- ``HostConfig.Memory``, ``MemoryReservation``; ``MemorySwap``: the spec's, else the old value
  when the limit is unchanged, else 0, which makes the engine derive it as for ``docker run
  --memory`` (2 x memory where the kernel accounts swap, -1 where it does not);
- ``RestartPolicy`` and ``PortBindings`` (the old object kept when it already means the spec's,
  so an equal setting reads back byte for byte); ``ExposedPorts`` follows the published ports;
- ``HostConfig.Init`` when the spec sets ``init`` (kept as it was when it already means the same:
  null is off), as ``docker run --init`` sets it;
- ``spec.networks`` the container is not on are connected (no aliases).

Runtime, derived by the engine (dropped, the engine makes them anew): ``Hostname`` when it is the
old container's short id, an empty ``Domainname``, ``ArgsEscaped``; per endpoint the short-id
alias the engine adds on user networks (API 1.41), ids, addresses, gateways and MAC addresses;
everything outside Config/HostConfig (State, NetworkSettings, Mounts, paths, GraphDriver...).
``HostConfig.Links`` is turned from inspect's ``/target:/name/alias`` back into ``target:alias``.

Anonymous volumes (an image ``VOLUME`` or ``-v /path``) would come back empty: each one whose path
the new container still declares is mounted by its volume name (``HostConfig.Binds`` gains
``<volume>:<path>``), as compose does, so its data stays.

A new image (the old container's image id is not the new image's): ``Env`` entries, ``Labels``
and ``ExposedPorts``/``Volumes`` keys equal to the OLD image's own, and ``WorkingDir``, ``User``,
``StopSignal``, ``OnBuild``, ``Shell`` and each ``Healthcheck`` field equal to it, are dropped so
the NEW image's defaults apply (else the old image's PATH would override the new one's). A value
the user set equal to the old image's default goes the same way: it cannot be told apart. When
the old image cannot be read, nothing is guessed: ``create_request`` refuses (the operation then
changes nothing), since keeping everything could pin the old image's defaults on the new one and
dropping could lose the user's settings.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tasks.core.container_spec import MANAGED_ENV_LABEL, ContainerSpec, normalize_port
from tasks.core.redact import is_redacted, same_env_value

# Config keys taken from the image when the container does not set them (the engine's merge).
_IMAGE_SCALARS = ("WorkingDir", "User", "StopSignal", "OnBuild", "Shell")
# Endpoint keys the engine fills in by itself; never sent back.
_RUNTIME_ENDPOINT_KEYS = frozenset(
    {
        "NetworkID", "EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "IPv6Gateway",
        "GlobalIPv6Address", "GlobalIPv6PrefixLen", "MacAddress", "DNSNames",
    }
)  # fmt: skip
_SPECIAL_MODES = ("host", "none")


class CreateBodyError(ValueError):
    """The create request cannot be built; nothing was changed. Never carries an env value."""


@dataclass(frozen=True)
class Endpoint:
    """A network to ``docker network connect`` before the start, with what the user set on it."""

    network: str
    aliases: tuple[str, ...] = ()
    ipv4: str = ""
    ipv6: str = ""
    link_local_ips: tuple[str, ...] = ()
    links: tuple[str, ...] = ()  # "container:alias"
    driver_opts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CreateRequest:
    name: str
    body: dict[str, Any] = field(repr=False)  # holds env values: upload it as a 0600 file, never print it
    extra_networks: tuple[Endpoint, ...] = ()

    def body_json(self) -> str:
        return json.dumps(self.body, sort_keys=True)


@dataclass(frozen=True)
class Engine:
    """How the target reaches its engine's API: a unix socket and a client that can POST to it."""

    socket: str
    client: str  # "curl" | "python3"


# -- the body -------------------------------------------------------------------------------------


def _one(inspect_json: Any) -> dict[str, Any]:
    if isinstance(inspect_json, list):
        if len(inspect_json) != 1:
            raise CreateBodyError(f"expected one object from docker inspect, got {len(inspect_json)}")
        return inspect_json[0]
    return inspect_json


def image_changed(current: Mapping[str, Any], new_image: Mapping[str, Any]) -> bool:
    """Whether the new container runs another image than the old one (ids compared)."""
    return _one(current).get("Image") != _one(new_image).get("Id")


def _key(entry: str) -> str:
    return entry.partition("=")[0]


def _env(config: Mapping[str, Any], spec: ContainerSpec, old_defaults: Iterable[str]) -> list[str]:
    labels = config.get("Labels") or {}
    managed = {k for k in (labels.get(MANAGED_ENV_LABEL) or "").split(",") if k}
    gone = managed - set(spec.env)
    defaults = set(old_defaults)
    env, seen = [], set()
    for entry in config.get("Env") or []:
        key = _key(entry)
        if key in spec.env:
            if key not in seen:
                wanted = spec.env[key]
                if is_redacted(wanted):
                    if not same_env_value(spec.name, key, entry.partition("=")[2], wanted):
                        raise CreateBodyError(
                            f"env.{key} of {spec.name} changed since the plan was made; run the deploy again"
                        )
                    env.append(entry)
                else:
                    env.append(f"{key}={wanted}")
                seen.add(key)
        elif key not in gone and entry not in defaults:
            env.append(entry)
    for key in sorted(spec.env):
        if key not in seen:
            if is_redacted(spec.env[key]):
                raise CreateBodyError(f"env.{key} of {spec.name} is gone since the plan was made")
            env.append(f"{key}={spec.env[key]}")
    return env


def _labels(config: Mapping[str, Any], spec: ContainerSpec, old_defaults: Mapping[str, str]) -> dict:
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if old_defaults.get(k, object()) != v}
    labels.update(spec.labels)
    labels.pop(MANAGED_ENV_LABEL, None)
    if spec.env:
        labels[MANAGED_ENV_LABEL] = ",".join(sorted(spec.env))
    return labels


def _port_bindings(ports: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in ports:
        text = normalize_port(port)
        published, _, target = text.rpartition(":")
        ip, _, host_port = published.rpartition(":") if published.count(":") else ("", "", published)
        if ip.startswith("["):
            ip = ip[1:-1]
        bindings.setdefault(target, []).append({"HostIp": ip, "HostPort": host_port})
    return bindings


def _normalized_bindings(bindings: Mapping[str, Any] | None) -> list[str]:
    ports = []
    for container_port, hosts in (bindings or {}).items():
        number, _, proto = container_port.partition("/")
        for binding in hosts or []:
            ip = binding.get("HostIp") or ""
            ip = f"[{ip}]:" if ":" in ip else (f"{ip}:" if ip else "")
            ports.append(f"{ip}{binding.get('HostPort') or ''}:{number}/{proto or 'tcp'}")
    return sorted(ports)


def _restart(policy: str) -> dict[str, Any]:
    name, _, retries = policy.partition(":")
    return {"Name": name, "MaximumRetryCount": int(retries or 0)}


def _restart_text(policy: Mapping[str, Any] | None) -> str:
    name = (policy or {}).get("Name") or "no"
    retries = (policy or {}).get("MaximumRetryCount") or 0
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def _drop_image_defaults(config: dict[str, Any], old: Mapping[str, Any]) -> None:
    """Unset what equals the old image's own value, so the new image's applies."""
    for key in _IMAGE_SCALARS:
        if key in config and old.get(key) and config[key] == old[key]:
            config[key] = "" if isinstance(old[key], str) else None
    for key in ("ExposedPorts", "Volumes"):
        if config.get(key) and old.get(key):
            config[key] = {k: v for k, v in config[key].items() if k not in old[key]} or None
    check, image_check = config.get("Healthcheck"), old.get("Healthcheck")
    if check and image_check:
        kept = {k: v for k, v in check.items() if image_check.get(k) != v}
        config["Healthcheck"] = kept or None


def _exposed(config: Mapping[str, Any], old_ports: Mapping[str, Any], new_ports: Mapping[str, Any]) -> dict:
    exposed = {
        k: v for k, v in (config.get("ExposedPorts") or {}).items() if k not in old_ports or k in new_ports
    }
    exposed.update({port: {} for port in new_ports if port not in exposed})
    return exposed


def _bind_target(bind: str) -> str:
    parts = bind.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _anonymous_volumes(current: Mapping[str, Any], host: Mapping[str, Any], declared: set[str]) -> list[str]:
    taken = {_bind_target(b) for b in host.get("Binds") or []}
    taken |= {m.get("Target") for m in host.get("Mounts") or []}
    taken |= set(host.get("Tmpfs") or {})
    binds = []
    for mount in current.get("Mounts") or []:
        path, name = mount.get("Destination"), mount.get("Name")
        if mount.get("Type") == "volume" and name and path in declared and path not in taken:
            binds.append(f"{name}:{path}" + ("" if mount.get("RW", True) else ":ro"))
    return binds


def _links(links: Iterable[str] | None) -> list[str] | None:
    """``/target:/name/alias`` (inspect) -> ``target:alias`` (create)."""
    if links is None:
        return None
    out = []
    for link in links:
        target, _, alias = link.partition(":")
        out.append(f"{target.lstrip('/')}:{alias.rsplit('/', 1)[-1]}" if alias else target.lstrip("/"))
    return out


def _endpoint_config(settings: Mapping[str, Any], short_id: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _RUNTIME_ENDPOINT_KEYS or not value:
            continue
        if key == "Aliases":
            value = [a for a in value if a != short_id]
        elif key == "IPAMConfig":
            value = {k: v for k, v in value.items() if v}
        if value:
            config[key] = value
    return config


def _endpoint(network: str, config: Mapping[str, Any]) -> Endpoint:
    ipam = config.get("IPAMConfig") or {}
    return Endpoint(
        network=network,
        aliases=tuple(config.get("Aliases") or ()),
        ipv4=ipam.get("IPv4Address") or "",
        ipv6=ipam.get("IPv6Address") or "",
        link_local_ips=tuple(ipam.get("LinkLocalIPs") or ()),
        links=tuple(config.get("Links") or ()),
        driver_opts=tuple(sorted((config.get("DriverOpts") or {}).items())),
    )


def _primary_network(mode: str, networks: Mapping[str, Any], missing: list[str]) -> str | None:
    if mode in ("default", ""):
        mode = "bridge"
    if mode in networks or mode in missing:
        return mode
    for name, settings in networks.items():  # the mode may name the network by id
        if mode and (settings.get("NetworkID") or "").startswith(mode):
            return name
    return None


def _networking(
    current: Mapping[str, Any], host: dict[str, Any], spec: ContainerSpec
) -> tuple[dict[str, Any], tuple[Endpoint, ...]]:
    """One endpoint at create, the other networks connected after; ``host["NetworkMode"]`` moves
    to a network the container is on only when it was disconnected from its mode's network (the
    engine would attach that one again)."""
    mode = host.get("NetworkMode") or "default"
    networks = (current.get("NetworkSettings") or {}).get("Networks") or {}
    missing = [n for n in spec.networks if n not in networks]
    special = mode in _SPECIAL_MODES or mode.startswith("container:")
    if missing and special:
        raise CreateBodyError(f"network mode {mode.split(':')[0]} cannot join networks {', '.join(missing)}")
    short_id = (current.get("Id") or "")[:12]
    primary = _primary_network(mode, networks, missing)
    wanted = [*sorted(networks), *missing]
    if primary is None and wanted and not special:
        primary = host["NetworkMode"] = wanted[0]
    endpoints: dict[str, Any] = {}
    if primary is not None and primary in networks:
        config = _endpoint_config(networks[primary], short_id)
        if config:
            endpoints[primary] = config
    extra = [
        _endpoint(name, _endpoint_config(settings, short_id))
        for name, settings in sorted(networks.items())
        if name != primary
    ]
    extra += [Endpoint(network) for network in missing if network != primary]
    return {"EndpointsConfig": endpoints}, tuple(extra)


def create_request(current: Any, spec: ContainerSpec, old_image: Any | None, new_image: Any) -> CreateRequest:
    """
    The create request for ``spec`` from the old container's inspect (see the module rules).
    ``old_image``: ``docker image inspect`` of the old container's image, needed only when it is
    not ``new_image`` (the inspect of ``spec.image``); None there refuses, nothing is guessed.
    """
    current, new_image = _one(current), _one(new_image)
    old_config = current.get("Config") or {}
    host = dict(current.get("HostConfig") or {})
    old_defaults: Mapping[str, Any] = {}
    if image_changed(current, new_image):
        if old_image is None:
            raise CreateBodyError(
                f"the image of {spec.name} ({str(current.get('Image'))[:19]}) cannot be read: its own "
                "defaults (env, workdir, user, healthcheck...) cannot be told from the settings made "
                "on the container, so a new container could keep stale ones or lose yours"
            )
        old_defaults = _one(old_image).get("Config") or {}

    config = {k: v for k, v in old_config.items() if k not in ("Hostname", "Domainname", "ArgsEscaped")}
    hostname = old_config.get("Hostname") or ""
    if hostname and hostname != (current.get("Id") or "")[:12]:
        config["Hostname"] = hostname
    if old_config.get("Domainname"):
        config["Domainname"] = old_config["Domainname"]
    if old_defaults:
        _drop_image_defaults(config, old_defaults)
    config["Env"] = _env(old_config, spec, _image_env(old_defaults))
    config["Labels"] = _labels(old_config, spec, old_defaults.get("Labels") or {})
    config["Image"] = spec.image
    config["Cmd"] = list(spec.command) or None
    config["Entrypoint"] = list(spec.entrypoint) if spec.entrypoint is not None else None

    # Managed host settings; an old object that already means the spec's is kept as it is.
    old_bindings = host.get("PortBindings") or {}
    if _normalized_bindings(old_bindings) != sorted(normalize_port(p) for p in spec.ports):
        host["PortBindings"] = _port_bindings(spec.ports)
    # Published ports are exposed, as `docker run --publish` does; ports only the old bindings
    # published go with them (the new image's own come back by the engine's merge).
    exposed = _exposed(config, old_bindings, host.get("PortBindings") or {})
    if exposed != (config.get("ExposedPorts") or {}):
        config["ExposedPorts"] = exposed or None
    if _restart_text(host.get("RestartPolicy")) != spec.restart_policy:
        host["RestartPolicy"] = _restart(spec.restart_policy)
    if spec.memory_swap is not None:
        host["MemorySwap"] = spec.memory_swap
    elif (host.get("Memory") or 0) != spec.memory:
        host["MemorySwap"] = 0
    host["Memory"] = spec.memory
    host["MemoryReservation"] = spec.memory_reservation
    if spec.init is not None and bool(host.get("Init")) != spec.init:
        host["Init"] = spec.init
    host["Links"] = _links(host.get("Links"))

    declared = set(config.get("Volumes") or {}) | set((new_image.get("Config") or {}).get("Volumes") or {})
    anonymous = _anonymous_volumes(current, host, declared)
    if anonymous:
        host["Binds"] = [*(host.get("Binds") or []), *anonymous]

    networking, extra = _networking(current, host, spec)
    body = {**config, "HostConfig": host, "NetworkingConfig": networking}
    return CreateRequest(spec.name, body, extra)


def _image_env(old_defaults: Mapping[str, Any]) -> list[str]:
    return list(old_defaults.get("Env") or [])


# -- sending it -----------------------------------------------------------------------------------

ENGINE_MARK = "engine "

# Which unix socket the `docker` CLI on the target talks to, and which client can POST to it.
# Prints "engine <client> <socket>"; exits 2 with a clear line when there is none to use.
ENGINE_COMMAND = (
    'if [ -n "${DOCKER_HOST:-}" ]; then host=$DOCKER_HOST; '
    "else host=$(docker context inspect -f '{{.Endpoints.docker.Host}}' 2>/dev/null) || host=; fi; "
    'case "$host" in '
    '"") sock=/var/run/docker.sock ;; '
    "unix://*) sock=${host#unix://} ;; "
    '*) echo "the docker CLI here reaches its engine over ${host%%://*}, not a unix socket: a recreate '
    "creates the container through the engine's unix socket, so run pyinfra against the engine's own "
    'host; nothing was changed" >&2; exit 2 ;; '
    "esac; "
    '[ -S "$sock" ] || { echo "$sock is not a unix socket: cannot reach the engine; nothing was changed" >&2; '
    "exit 2; }; "
    "if command -v curl >/dev/null 2>&1; then client=curl; "
    "elif command -v python3 >/dev/null 2>&1; then client=python3; "
    'else echo "neither curl nor python3 on this host: one is needed to create the container through '
    'the engine API; nothing was changed" >&2; exit 2; fi; '
    f'echo "{ENGINE_MARK}$client $sock"'
)


def parse_engine(output: str) -> Engine:
    """ENGINE_COMMAND's answer."""
    for line in output.splitlines():
        if line.startswith(ENGINE_MARK):
            client, _, socket = line[len(ENGINE_MARK) :].partition(" ")
            if client in ("curl", "python3") and socket:
                return Engine(socket=socket, client=client)
    raise CreateBodyError(f"unexpected answer when looking for the engine's socket: {output.strip()[:200]}")


# http.client over AF_UNIX: argv socket, body file, answer file, path; prints the HTTP status.
_PYTHON_POST = """import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
conn = Unix("localhost", timeout=120)
with open(sys.argv[2], "rb") as body:
    conn.request("POST", sys.argv[4], body.read(), {"Content-Type": "application/json"})
answer = conn.getresponse()
with open(sys.argv[3], "wb") as out:
    out.write(answer.read())
print(answer.status)"""


def create_command(engine: Engine, body_path: str, answer_path: str, name: str) -> str:
    """POST the body file (0600, in a private folder) to ``/containers/create?name=``: the body
    never goes on a command line nor in output. Prints the engine's JSON answer (id, warnings);
    on any other status than 201, prints the engine's message on stderr and exits 1."""
    path = f"/containers/create?name={quote(name, safe='')}"
    sock, body, answer = shlex.quote(engine.socket), shlex.quote(body_path), shlex.quote(answer_path)
    if engine.client == "curl":
        post = (
            f"curl --unix-socket {sock} -sS -X POST -H 'Content-Type: application/json' "
            f"--data-binary @{body} -o {answer} -w '%{{http_code}}' {shlex.quote('http://localhost' + path)}"
        )
    else:
        post = f"python3 -c {shlex.quote(_PYTHON_POST)} {sock} {body} {answer} {shlex.quote(path)}"
    return (
        f"code=$({post}) || exit 1; "
        f'if [ "$code" = 201 ]; then cat {answer}; '
        f'else echo "the engine answered HTTP $code: $(head -c 600 {answer} 2>/dev/null)" >&2; exit 1; fi'
    )


def network_connect_args(endpoint: Endpoint, container: str) -> list[str]:
    """``docker network connect`` argv carrying every endpoint setting API 1.41 lets one set."""
    args = ["docker", "network", "connect"]
    for alias in endpoint.aliases:
        args += ["--alias", alias]
    if endpoint.ipv4:
        args += ["--ip", endpoint.ipv4]
    if endpoint.ipv6:
        args += ["--ip6", endpoint.ipv6]
    for ip in endpoint.link_local_ips:
        args += ["--link-local-ip", ip]
    for link in endpoint.links:
        args += ["--link", link]
    for key, value in endpoint.driver_opts:
        args += ["--driver-opt", f"{key}={value}"]
    return [*args, endpoint.network, container]


def created_id(answer: str) -> tuple[str, list[str]]:
    """The new container's id and the engine's warnings from create_command's output."""
    start = answer.find("{")
    try:
        data = json.loads(answer[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    return str(data.get("Id") or ""), [str(w) for w in data.get("Warnings") or []]
