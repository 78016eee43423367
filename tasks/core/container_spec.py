"""
Container spec, drift and docker CLI arguments: the pure half of our container operation
(community.docker's module/module_utils split). No I/O: the fact feeds ``docker inspect``
JSON in, the operation yields the argv this module builds.

Drift rules:
- only what the desired spec names is compared: env keys and labels the image or compose
  added are not drift; ``entrypoint=None`` means "the image's own".
- memory, memory reservation, memory swap and restart policy can change in place
  (``docker update``); anything else needs a recreate.
- ``init`` (Docker's ``--init``: ``docker-init``, i.e. tini, as PID 1, so the server gets the stop
  signal instead of ignoring it as a PID 1 without a handler does) is compared when the desired
  spec sets it (None: not managed); inspect's ``HostConfig.Init`` null reads as off (a daemon-wide
  ``"init": true`` in daemon.json is not seen: asking for it then recreates once, to set it on the
  container itself). It needs a recreate.
- env keys we set are listed (names only) in the label ``MANAGED_ENV_LABEL``; a key listed
  there but no longer desired is drift (else a dropped key would linger forever), unless
  its value equals the image's default.
- values of secret env keys never appear in a Change: both sides show ``***``; equality is
  decided on SHA-256 digests. The fact itself reads secret env values as digests (salted with
  the container's name, tasks/core/redact.py) and URL passwords as ``***``: desired values are
  compared with those digests, and the desired command and labels are masked the same way
  before they are compared (a URL password is never desired: settings refuse one).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tasks.core.quoting import control_char
from tasks.core.redact import MASK, is_redacted, mask_urls, same_env_value
from tasks.core.sizes import docker_size, human_size

MANAGED_ENV_LABEL = "io.quantlab.managed-env"

# docker update can change these without a recreate.
UPDATABLE = frozenset({"memory", "memory_reservation", "memory_swap", "restart_policy"})
_SIZE_SETTINGS = frozenset({"memory", "memory_reservation", "memory_swap"})

_PORT_RE = re.compile(
    r"(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?"
    r"(?P<host>\d{1,5}):(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp|sctp))?"
)
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None  # None: the image's entrypoint
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # holds secrets: never shown
    secret_env_keys: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    memory: int = 0  # bytes, 0 = unlimited
    memory_reservation: int = 0
    memory_swap: int | None = None  # None: Docker's default (2 x memory); not compared
    restart_policy: str = "no"  # no | always | unless-stopped | on-failure[:N]
    ports: tuple[str, ...] = ()  # canonical, see normalize_port
    networks: tuple[str, ...] = ()  # desired: must be attached to these
    init: bool | None = None  # run under Docker's init (--init); None: not managed, left as it is
    # Read from docker inspect only:
    image_id: str | None = None
    managed_env_keys: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ImageDefaults:
    """What the image brings by itself (``docker image inspect``)."""

    id: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Change:
    setting: str  # "memory", "env.MLFLOW_X", "labels.team", "command" ...
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.setting}: {_show(self.setting, self.old)} -> {_show(self.setting, self.new)}"


@dataclass(frozen=True)
class Plan:
    action: str  # "none" | "update" | "recreate" | "create"
    name: str
    changes: tuple[Change, ...] = ()

    @property
    def changed(self) -> bool:
        return self.action != "none"


# -- reading docker inspect -----------------------------------------------------------------


def normalize_port(text: str) -> str:
    """``'127.0.0.1:15500:5000'`` -> ``'127.0.0.1:15500:5000/tcp'``; ``'8080:80'`` -> ``'8080:80/tcp'``."""
    match = _PORT_RE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not [ip:]host_port:container_port[/proto]")
    ip = match["ip"] or ""
    prefix = f"{ip}:" if ip else ""
    return f"{prefix}{int(match['host'])}:{int(match['container'])}/{match['proto'] or 'tcp'}"


def _ports_from_bindings(bindings: Mapping[str, Any] | None) -> tuple[str, ...]:
    ports = []
    for container_port, hosts in (bindings or {}).items():
        number, _, proto = container_port.partition("/")
        for binding in hosts or []:
            ip = binding.get("HostIp") or ""
            if ":" in ip:
                ip = f"[{ip}]"
            host_port = binding.get("HostPort") or ""
            prefix = f"{ip}:" if ip else ""
            ports.append(f"{prefix}{host_port}:{number}/{proto or 'tcp'}")
    return tuple(sorted(ports))


def _env_dict(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def _restart_policy(policy: Mapping[str, Any] | None) -> str:
    name = (policy or {}).get("Name") or "no"
    retries = (policy or {}).get("MaximumRetryCount") or 0
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def _one(inspect_json: Any) -> Mapping[str, Any]:
    # `docker inspect` prints a list; accept it or its single element.
    if isinstance(inspect_json, list):
        if len(inspect_json) != 1:
            raise ValueError(f"expected one object from docker inspect, got {len(inspect_json)}")
        return inspect_json[0]
    return inspect_json


def spec_from_inspect(inspect_json: Any) -> ContainerSpec:
    """The running container as a ContainerSpec (everything it has, image defaults included)."""
    data = _one(inspect_json)
    config = data.get("Config") or {}
    host = data.get("HostConfig") or {}
    labels = dict(config.get("Labels") or {})
    managed = labels.get(MANAGED_ENV_LABEL, "")
    entrypoint = config.get("Entrypoint")
    return ContainerSpec(
        name=(data.get("Name") or "").lstrip("/"),
        image=config.get("Image") or "",
        command=tuple(config.get("Cmd") or ()),
        entrypoint=tuple(entrypoint) if entrypoint is not None else None,
        env=_env_dict(config.get("Env")),
        labels=labels,
        memory=host.get("Memory") or 0,
        memory_reservation=host.get("MemoryReservation") or 0,
        memory_swap=host.get("MemorySwap"),
        restart_policy=_restart_policy(host.get("RestartPolicy")),
        ports=_ports_from_bindings(host.get("PortBindings")),
        networks=tuple(sorted((data.get("NetworkSettings") or {}).get("Networks") or {})),
        init=bool(host.get("Init")),
        image_id=data.get("Image"),
        managed_env_keys=frozenset(k for k in managed.split(",") if k),
    )


def image_defaults_from_inspect(image_inspect: Any) -> ImageDefaults:
    data = _one(image_inspect)
    config = data.get("Config") or {}
    entrypoint = config.get("Entrypoint")
    return ImageDefaults(
        id=data.get("Id"),
        env=_env_dict(config.get("Env")),
        labels=dict(config.get("Labels") or {}),
        command=tuple(config.get("Cmd") or ()),
        entrypoint=tuple(entrypoint) if entrypoint is not None else None,
    )


# -- diff -----------------------------------------------------------------------------------


def _env_changes(desired: ContainerSpec, actual: ContainerSpec, image: ImageDefaults | None):
    salt = desired.name  # the fact digests with the name it was asked for
    changes = []
    for key, value in sorted(desired.env.items()):
        old = actual.env.get(key)
        if same_env_value(salt, key, old, value):
            continue
        hidden = key in desired.secret_env_keys or is_redacted(value)
        shown_old = MASK if old is not None and (hidden or is_redacted(old)) else old
        changes.append(Change(f"env.{key}", shown_old, MASK if hidden else value))
    for key in sorted(actual.managed_env_keys - set(desired.env)):
        if key not in actual.env:
            continue
        if image is not None and image.env.get(key) == actual.env[key]:
            continue
        # We no longer know whether it was a secret: never show the old value.
        changes.append(Change(f"env.{key}", MASK, None))
    return changes


def _masked(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return tuple(mask_urls(v) for v in values) if values is not None else None


def diff_spec(
    desired: ContainerSpec, actual: ContainerSpec | None, image_defaults: ImageDefaults | None = None
) -> Plan:
    """
    Compare the desired spec with the running container and pick the least action:
    none, update (docker update: memory, reservation, swap, restart policy), recreate,
    or create when there is no container.
    """
    if actual is None:
        return Plan("create", desired.name)
    changes: list[Change] = []

    def compare(setting: str, old: Any, new: Any) -> None:
        if old != new:
            changes.append(Change(setting, old, new))

    compare("image", actual.image, desired.image)
    if image_defaults is not None and image_defaults.id and actual.image_id:
        # Same tag, rebuilt image: the container still runs the old one.
        compare("image_id", _short_id(actual.image_id), _short_id(image_defaults.id))
    compare("command", actual.command, _masked(desired.command))
    if desired.entrypoint is not None:
        compare("entrypoint", actual.entrypoint, _masked(desired.entrypoint))
    elif image_defaults is not None:
        compare("entrypoint", actual.entrypoint, image_defaults.entrypoint)
    changes += _env_changes(desired, actual, image_defaults)
    for key, value in sorted(desired.labels.items()):
        compare(f"labels.{mask_urls(key)}", actual.labels.get(mask_urls(key)), mask_urls(value))
    compare("ports", tuple(sorted(actual.ports)), tuple(sorted(desired.ports)))
    missing = [n for n in desired.networks if n not in actual.networks]
    if missing:
        changes.append(Change("networks", actual.networks, desired.networks))
    compare("memory", actual.memory, desired.memory)
    compare("memory_reservation", actual.memory_reservation, desired.memory_reservation)
    if desired.memory_swap is not None:
        compare("memory_swap", actual.memory_swap, desired.memory_swap)
    compare("restart_policy", actual.restart_policy, desired.restart_policy)
    if desired.init is not None:
        compare("init", bool(actual.init), desired.init)

    if not changes:
        return Plan("none", desired.name)
    return Plan(_action(changes, desired), desired.name, tuple(changes))


def _action(changes: list[Change], desired: ContainerSpec) -> str:
    if any(c.setting not in UPDATABLE for c in changes):
        return "recreate"
    # docker update treats 0 as "leave as is": removing a limit needs a recreate.
    if any(c.setting in _SIZE_SETTINGS and not c.new for c in changes):
        return "recreate"
    return "update"


def _short_id(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def _show(setting: str, value: Any) -> str:
    if value is None:
        return "(unset)"
    if value == MASK:
        return MASK
    if isinstance(value, bool):
        return "on" if value else "off"
    if setting in _SIZE_SETTINGS and isinstance(value, int):
        return "unlimited" if value == -1 else human_size(value)
    if isinstance(value, tuple):
        return shlex.join(value) if value else "(none)"
    text = str(value)
    return shlex.quote(text) if (not text or any(c.isspace() for c in text)) else text


def format_plan(plan: Plan) -> list[str]:
    """One line a change, e.g. ``memory: 420 MiB -> 1 GiB``; secrets show as ``***``."""
    return [str(change) for change in plan.changes]


def describe_plan(plan: Plan) -> str:
    """One line for logs and ``host.noop``: what will happen to which container, and why."""
    if plan.action == "none":
        return f"container {plan.name} matches the settings"
    if plan.action == "create":
        return f"create container {plan.name}"
    verb = "update in place" if plan.action == "update" else "recreate"
    return f"{verb} container {plan.name}: {', '.join(c.setting for c in plan.changes)}"


# -- docker CLI arguments -------------------------------------------------------------------


def env_file_text(spec: ContainerSpec) -> str:
    """
    Body of a ``docker run --env-file`` file, so env values (secrets included) never sit
    on a command line. Upload it with mode 0600 and delete it after ``docker run``.
    Docker env files have no quoting: a value is everything after the first ``=``.
    """
    lines = []
    for key, value in sorted(spec.env.items()):
        if not _ENV_KEY_RE.fullmatch(key):
            raise ValueError(f"env key {key!r} is not a valid variable name")
        if is_redacted(value):
            raise ValueError(f"env.{key}: only its digest is known here, not its value")
        bad = control_char(value)
        if bad:
            raise ValueError(
                f"env.{key}: value spans lines or holds a control character ({bad}); "
                "Docker env files cannot carry it"
            )
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def _swap_for_update(spec: ContainerSpec) -> int | None:
    # Raising --memory above the container's current swap limit is refused ("Memory limit
    # should be smaller than already set memoryswap limit"); give what a fresh run gives.
    if spec.memory_swap is not None:
        return spec.memory_swap
    return spec.memory * 2 if spec.memory else None


def docker_run_args(spec: ContainerSpec, env_file: str | None) -> list[str]:
    """``docker run`` argv. Env goes through ``env_file`` (see env_file_text), never ``-e``."""
    if spec.env and not env_file:
        raise ValueError("the spec has env: pass env_file, env values never go on a command line")
    if len(spec.networks) > 1:
        raise ValueError("docker run attaches one network; connect others afterwards")
    args = ["docker", "run", "--detach", "--name", spec.name, "--restart", spec.restart_policy]
    if spec.init is not None:
        args.append("--init" if spec.init else "--init=false")
    if spec.memory:
        args += ["--memory", docker_size(spec.memory)]
    if spec.memory_swap is not None:
        args += ["--memory-swap", str(spec.memory_swap)]
    if spec.memory_reservation:
        args += ["--memory-reservation", docker_size(spec.memory_reservation)]
    for port in spec.ports:
        args += ["--publish", port]
    for network in spec.networks:
        args += ["--network", network]
    for key, value in sorted(spec.labels.items()):
        args += ["--label", f"{key}={value}"]
    if spec.env:
        assert env_file  # refused above when missing
        args += ["--label", f"{MANAGED_ENV_LABEL}={','.join(sorted(spec.env))}"]
        args += ["--env-file", env_file]
    if spec.entrypoint is not None:
        if len(spec.entrypoint) > 1:
            raise ValueError("docker run --entrypoint takes one program; put the rest in command")
        args += ["--entrypoint", spec.entrypoint[0] if spec.entrypoint else ""]
    # `--`: the image is never read as an option, whatever reached the spec.
    return args + ["--", spec.image, *spec.command]


def docker_update_args(spec: ContainerSpec) -> list[str]:
    """``docker update`` argv for the in-place settings (memory, reservation, swap, restart)."""
    args = ["docker", "update", "--restart", spec.restart_policy]
    if spec.memory:
        args += ["--memory", docker_size(spec.memory)]
    swap = _swap_for_update(spec)
    if swap is not None:
        args += ["--memory-swap", str(swap) if swap < 0 else docker_size(swap)]
    if spec.memory_reservation:
        args += ["--memory-reservation", docker_size(spec.memory_reservation)]
    return args + [spec.name]
