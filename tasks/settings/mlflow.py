"""
Validated host data for the MLflow deploy.

Everything a deploy reads from host data passes through here first, so a typo or a bad
size fails the run with one clear message (host, key, what is wrong) before any change
(DESIGN principle 6). Pure: no I/O except ``resolve_secret_env``, which reads the
controller's environment or files, never the target.

Host data shape (group_data/all.py or a host's data)::

    mlflow = {
        "image": "quantlab/mlflow:2.9.2",
        "workers": 2,
        "memory_limit": "1g",
        "memory_reservation": "512m",
        "ports": ["127.0.0.1:15500:5000"],
        "secret_env": {"MLFLOW_BACKEND_STORE_URI": {"env": "MLFLOW_DB_URI"}},
    }
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from pyinfra.api.exceptions import PyinfraError

from tasks.core.sizes import DOCKER_MIN_MEMORY, GIB, MIB, human_size, parse_size

# Env keys the deploy owns: they steer which server runs and with which options, so a
# value in host data would fight the typed settings (see tasks/core/mlflow_server.py).
MANAGED_ENV_KEYS = frozenset(
    {"GUNICORN_CMD_ARGS", "MLFLOW_GUNICORN_OPTS", "MLFLOW_UVICORN_OPTS", "MLFLOW_WORKERS"}
)
# Flags the deploy writes itself; the same flag in extra_args would be ambiguous.
MANAGED_FLAGS = frozenset(
    {
        "-h", "--host", "-p", "--port", "-w", "--workers",
        "--gunicorn-opts", "--uvicorn-opts", "--waitress-opts",
        "--backend-store-uri", "--default-artifact-root", "--artifacts-destination",
    }
)
_SECRET_NAME_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY", re.IGNORECASE)
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_RESTART_RE = re.compile(r"no|always|unless-stopped|on-failure(:\d+)?")
_PORT_RE = re.compile(
    r"(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?"
    r"(?P<host>\d{1,5}):(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp|sctp))?"
)
_WORKER_CLASS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
SERVER_CHOICES = ("auto", "gunicorn", "uvicorn")


class SettingsError(PyinfraError, ValueError):
    """Bad host data. The message names the host and each bad key; never a secret value."""

    def __init__(self, host_name: str, problems: list[str]):
        self.host_name = host_name
        self.problems = problems
        super().__init__("\n".join(f"host '{host_name}': {p}" for p in problems))


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    """Where the controller finds a secret: an environment variable or a file."""

    source: str  # "env" | "file"
    name: str  # variable name, or file path


@dataclass(frozen=True)
class MlflowSettings:
    # Defaults are the incident's fix (DESIGN: "The fix").
    container_name: str = "quant-mlflow"
    image: str = "quantlab/mlflow:2.9.2"
    server: str = "auto"  # auto: gunicorn before MLflow 3.3, uvicorn from 3.3
    host: str = "0.0.0.0"
    port: int = 5000
    backend_store_uri: str | None = None
    default_artifact_root: str | None = None
    artifacts_destination: str | None = None
    extra_args: tuple[str, ...] = ()
    workers: int = 2
    timeout: int = 60
    max_requests: int = 100
    max_requests_jitter: int = 10
    worker_class: str = "sync"
    memory_limit: int = 1 * GIB
    memory_reservation: int = 512 * MIB
    restart_policy: str = "unless-stopped"
    ports: tuple[str, ...] = ()
    network: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    compose_file: str | None = None
    compose_service: str = "mlflow"
    secret_env: Mapping[str, SecretRef] = field(default_factory=dict)


SETTING_KEYS = tuple(MlflowSettings.__dataclass_fields__)
# Settings whose explicit null in host data means "not set" rather than "use the default".
_NULLABLE = frozenset(
    {"backend_store_uri", "default_artifact_root", "artifacts_destination", "network",
     "compose_file"}
)


class _Checker:
    """Collects every problem so one run shows them all, not one per attempt."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.problems: list[str] = []

    def bad(self, key: str, text: str) -> None:
        self.problems.append(f"{self.prefix}{key}: {text}")

    def string(self, key, value, pattern=None, hint="") -> str | None:
        if not isinstance(value, str) or not value:
            self.bad(key, f"{value!r} is not a non-empty string")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.bad(key, f"{value!r} is not valid{hint}")
            return None
        return value

    def optional_string(self, key, value) -> str | None:
        return None if value is None else self.string(key, value)

    def integer(self, key, value, minimum, maximum=None) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, f"{value!r} is not a whole number")
            return None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            self.bad(key, f"{value!r} must be >= {minimum}{upper}")
            return None
        return value

    def size(self, key, value) -> int | None:
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.bad(key, str(exc))
            return None
        if size < DOCKER_MIN_MEMORY:
            self.bad(key, f"{value!r} is below Docker's minimum of 6m")
            return None
        return size

    def string_list(self, key, value) -> tuple[str, ...] | None:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) for item in value
        ):
            self.bad(key, f"{value!r} is not a list of strings")
            return None
        return tuple(value)

    def string_map(self, key, value, key_pattern=None) -> dict[str, str] | None:
        if not isinstance(value, Mapping):
            self.bad(key, f"expected a mapping, got {type(value).__name__}")
            return None
        result = {}
        for name, item in value.items():
            if not isinstance(name, str) or (key_pattern and not key_pattern.fullmatch(name)):
                self.bad(f"{key}.{name}", "is not a valid name")
                continue
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                self.bad(f"{key}.{name}", f"{type(item).__name__} value; use a string")
                continue
            text = str(item)
            if "\n" in text or "\r" in text:
                self.bad(f"{key}.{name}", "value spans lines (Docker env files cannot carry it)")
                continue
            result[name] = text
        return result


def _unknown_key_message(key: Any) -> str:
    close = difflib.get_close_matches(str(key), SETTING_KEYS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown setting{hint} (known: {', '.join(SETTING_KEYS)})"


def _uri_has_password(uri: str) -> bool:
    try:
        return urlsplit(uri).password is not None
    except ValueError:
        return False


def _parse_secret_env(check: _Checker, value: Any) -> dict[str, SecretRef]:
    if not isinstance(value, Mapping):
        check.bad("secret_env", f"expected a mapping, got {type(value).__name__}")
        return {}
    refs = {}
    for name, ref in value.items():
        key = f"secret_env.{name}"
        if not isinstance(name, str) or not _ENV_KEY_RE.fullmatch(name):
            check.bad(key, "is not a valid environment variable name")
            continue
        if (
            not isinstance(ref, Mapping)
            or len(ref) != 1
            or next(iter(ref)) not in ("env", "file")
            or not isinstance(next(iter(ref.values())), str)
            or not next(iter(ref.values()))
        ):
            # Never echo the value: someone may have pasted the secret itself here.
            check.bad(key, 'must be {"env": "VARIABLE"} or {"file": "/path/on/controller"}')
            continue
        source, where = next(iter(ref.items()))
        refs[name] = SecretRef(source, where)
    return refs


def mlflow_settings_from_host_data(host_name: str, data: Mapping[str, Any] | None) -> MlflowSettings:
    """
    Validate the host's ``mlflow`` data and return settings with defaults filled in.
    Raises ``SettingsError`` listing every problem (unknown keys, types, ranges).
    """
    data = dict(data or {})
    check = _Checker("mlflow.")
    values: dict[str, Any] = {}

    for key in data:
        if key not in SETTING_KEYS:
            check.bad(str(key), _unknown_key_message(key))

    def given(key: str) -> bool:
        return key in data

    if given("container_name"):
        values["container_name"] = check.string(
            "container_name", data["container_name"], _CONTAINER_NAME_RE,
            " (letters, digits, _ . -)",
        )
    if given("image"):
        image = check.string("image", data["image"])
        if image and any(ch.isspace() for ch in image):
            check.bad("image", f"{image!r} contains whitespace")
        values["image"] = image
    if given("server") and data["server"] not in SERVER_CHOICES:
        check.bad("server", f"{data['server']!r} is not one of {', '.join(SERVER_CHOICES)}")
    elif given("server"):
        values["server"] = data["server"]
    if given("host"):
        values["host"] = check.string("host", data["host"])
    if given("port"):
        values["port"] = check.integer("port", data["port"], 1, 65535)

    for key in ("backend_store_uri", "default_artifact_root", "artifacts_destination"):
        if given(key):
            uri = check.optional_string(key, data[key])
            if uri and _uri_has_password(uri):
                # Command lines show in `ps` and `docker inspect`: keep passwords out.
                check.bad(key, "contains a password; put the URI in secret_env "
                          "(MLFLOW_BACKEND_STORE_URI) instead")
            values[key] = uri

    if given("extra_args"):
        args = check.string_list("extra_args", data["extra_args"])
        if args is not None:
            for arg in args:
                flag = arg.split("=", 1)[0]
                if flag in MANAGED_FLAGS:
                    check.bad("extra_args", f"{flag} is set by the deploy; use its setting instead")
        values["extra_args"] = args

    if given("workers"):
        values["workers"] = check.integer("workers", data["workers"], 1, 64)
    if given("timeout"):
        values["timeout"] = check.integer("timeout", data["timeout"], 1)
    if given("max_requests"):
        values["max_requests"] = check.integer("max_requests", data["max_requests"], 0)
    if given("max_requests_jitter"):
        values["max_requests_jitter"] = check.integer(
            "max_requests_jitter", data["max_requests_jitter"], 0
        )
    if given("worker_class"):
        values["worker_class"] = check.string(
            "worker_class", data["worker_class"], _WORKER_CLASS_RE, " (a gunicorn worker class)"
        )

    limit = check.size("memory_limit", data["memory_limit"]) if given("memory_limit") else None
    reservation = (
        check.size("memory_reservation", data["memory_reservation"])
        if given("memory_reservation")
        else None
    )
    values["memory_limit"], values["memory_reservation"] = limit, reservation
    effective_limit = limit if given("memory_limit") else MlflowSettings.memory_limit
    effective_res = reservation if given("memory_reservation") else MlflowSettings.memory_reservation
    if effective_limit and effective_res and effective_res > effective_limit:
        check.bad(
            "memory_reservation",
            f"{human_size(effective_res)} is above memory_limit {human_size(effective_limit)}",
        )

    if given("restart_policy"):
        values["restart_policy"] = check.string(
            "restart_policy", data["restart_policy"], _RESTART_RE,
            " (no, always, unless-stopped, on-failure or on-failure:N)",
        )
    if given("ports"):
        ports = check.string_list("ports", data["ports"])
        if ports is not None:
            for port in ports:
                match = _PORT_RE.fullmatch(port)
                if not match or not all(
                    1 <= int(match[part]) <= 65535 for part in ("host", "container")
                ):
                    check.bad("ports", f"{port!r} is not [ip:]host_port:container_port[/proto]")
        values["ports"] = ports
    if given("network"):
        values["network"] = check.optional_string("network", data["network"])

    if given("env"):
        env = check.string_map("env", data["env"], _ENV_KEY_RE)
        for name in env or {}:
            if name in MANAGED_ENV_KEYS:
                check.bad(f"env.{name}", "is managed by the deploy (workers, timeout, "
                          "max_requests ... settings); remove it")
            elif _SECRET_NAME_RE.search(name):
                check.bad(f"env.{name}", "looks like a secret; use secret_env so the "
                          "value never sits in inventory")
        values["env"] = env
    if given("labels"):
        values["labels"] = check.string_map("labels", data["labels"])
    if given("compose_file"):
        values["compose_file"] = check.optional_string("compose_file", data["compose_file"])
    if given("compose_service"):
        values["compose_service"] = check.string("compose_service", data["compose_service"])
    if given("secret_env"):
        refs = _parse_secret_env(check, data["secret_env"])
        for name in refs:
            if name in (values.get("env") or {}):
                check.bad(f"secret_env.{name}", "is also in env; keep it in one place")
            if name in MANAGED_ENV_KEYS:
                check.bad(f"secret_env.{name}", "is managed by the deploy")
        values["secret_env"] = refs

    if check.problems:
        raise SettingsError(host_name, check.problems)
    return MlflowSettings(**{k: v for k, v in values.items() if v is not None or k in _NULLABLE})



def resolve_secret_env(
    host_name: str,
    settings: MlflowSettings,
    environ: Mapping[str, str] | None = None,
    read_file: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """
    Read each ``secret_env`` value on the controller. Errors name the reference
    (variable or path), never a value. A file's single trailing newline is dropped.
    """
    environ = os.environ if environ is None else environ
    read_file = read_file or (lambda path: Path(path).expanduser().read_text(encoding="utf-8"))
    values, problems = {}, []
    for name, ref in settings.secret_env.items():
        key = f"mlflow.secret_env.{name}"
        if ref.source == "env":
            value = environ.get(ref.name)
            if not value:
                problems.append(f"{key}: environment variable {ref.name} is not set on the controller")
                continue
        else:
            try:
                value = read_file(ref.name)
            except OSError as exc:
                problems.append(f"{key}: cannot read {ref.name}: {exc.strerror or exc}")
                continue
            value = value[:-1] if value.endswith("\n") else value
        if "\n" in value or "\r" in value or not value:
            problems.append(f"{key}: value is empty or spans lines")
            continue
        values[name] = value
    if problems:
        raise SettingsError(host_name, problems)
    return values
