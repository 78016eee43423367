"""
The ``onboard`` block: what onboarding makes of a fresh Debian host (deploys/onboard_host.py).

Only ``authorized_keys`` is required: public key lines, or ``{"file": "/path/on/controller.pub"}``
(read on the controller; a public key is not a secret, so it is not a SecretSource)::

    onboard = {
        "authorized_keys": [{"file": "~/.ssh/deploy_ed25519.pub"}],
        "engine": "socket",        # this host uses an engine whose socket is mounted in
    }

Guards: what onboarding creates and makes the deploy user own (``stack_dir``, its
``directories``, the compose file, the user's ``home``) must lie strictly below an allowed root
(``allowed_roots``, default /opt and /srv, plus the deploy user's home for the stack; ``/home``
for the home), never in a system directory (tasks/core/onboard_preflight.py; on the host too,
as the paths resolve, so a symlink cannot lead there); ``compose_file`` stays inside
``stack_dir``. A sudo rule is one absolute program in a system directory with its exact
arguments: no shells, editors, pagers, interpreters or file writers, no wildcards, no ``ALL``
(:func:`tasks.core.onboard_files.sudo_command_problem`). The deploy user joins the ``docker``
group, which is root on the host in all but name: the deploy says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, WithJsonSchema, field_validator, model_validator

from tasks.core.onboard_files import sudo_command_problem
from tasks.core.onboard_preflight import outside_roots, root_problem
from tasks.settings.base import Block, Pattern
from tasks.settings.types import Size, looks_secret

ENGINES = ("local", "socket")
USER_NAME = r"[a-z_][a-z0-9_-]{0,31}"
_KEY_RE = re.compile(
    r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com) [A-Za-z0-9+/]+=*( [^\n\r]*)?"
)
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?")
# Characters a path must not hold: it goes into shell command lines unquoted in places.
_UNSAFE_PATH_CHARS = set("'\"$`\\")

# Key lines, or {"file": path} read on the controller (the schema says so; the validator reads).
PublicKeys = Annotated[
    tuple[str, ...],
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {"file": {"type": "string"}},
                        "required": ["file"],
                        "additionalProperties": False,
                    },
                ]
            },
            "description": 'required: public key lines or {"file": "/path/on/controller.pub"}',
        }
    ),
]
UserName = Annotated[str, Pattern(USER_NAME, "a user name: lower-case letters, digits, _ and -, at most 32")]
FileName = Annotated[str, Pattern(r"[A-Za-z0-9_./-]+", "letters, digits, _ . / -")]


def _unsafe(path: str) -> bool:
    return any(c.isspace() or c in _UNSAFE_PATH_CHARS for c in path)


def read_public_keys(item: Any, where: str, read_file: Any = None) -> tuple[list[str], list[str]]:
    """The key lines one ``authorized_keys`` entry stands for, and its problems (``where: text``).

    An entry is a key line, or ``{"file": path}`` read here, on the controller (blank lines and
    ``#`` comments skipped)."""
    reader = read_file or (lambda path: Path(path).expanduser().read_text(encoding="utf-8"))
    if isinstance(item, Mapping) and set(item) == {"file"} and isinstance(item["file"], str):
        try:
            text = reader(item["file"])
        except OSError as exc:
            return [], [f"{where}: cannot read {item['file']}: {exc.strerror or exc}"]
        keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return keys, ([] if keys else [f"{where}: {item['file']} holds no public key"])
    if isinstance(item, str):
        return [item.strip()], []
    return [], [f'{where}: expected a public key line or {{"file": "/path/on/controller.pub"}}']


def compose_problems(document: Any) -> list[str]:
    """A compose document in settings: services as mappings; secret-looking env values only as ${VAR}."""
    if (
        not isinstance(document, Mapping)
        or not isinstance(document.get("services"), Mapping)
        or not document["services"]
    ):
        return ["compose: expected a mapping with a non-empty 'services' mapping"]
    problems = []
    for name, service in document["services"].items():
        if not isinstance(service, Mapping):
            problems.append(f"compose.services.{name}: expected a mapping")
            continue
        env = service.get("environment") or {}
        items = (
            env.items()
            if isinstance(env, Mapping)
            else ((str(e).partition("=")[0], str(e).partition("=")[2]) for e in env)
        )
        for key, value in items:
            if looks_secret(str(key)) and value not in (None, "") and not str(value).startswith("${"):
                problems.append(
                    f"compose.services.{name}.environment.{key}: looks like a secret; "
                    "write ${VAR} and let compose read it from its environment"
                )
    return problems


class OnboardSettings(Block):
    """A fresh host made a managed member of the fleet: deploy user, sudo, Docker, stack files."""

    free_text = frozenset({"compose"})  # a compose document may hold multi-line strings

    authorized_keys: PublicKeys = Field((), validate_default=True)
    user: UserName = Field("deploy", description="the deploy user pyinfra and people log in as afterwards")
    exclusive_keys: StrictBool = Field(False, description="remove authorized keys not listed")
    shell: str = "/bin/bash"
    home: str | None = Field(None, description="None: /home/<user>")
    sudo_commands: tuple[str, ...] = Field(
        (
            "/usr/bin/systemctl restart docker",
            "/usr/bin/systemctl status docker",
            "/usr/bin/journalctl -u docker",
        ),
        description="NOPASSWD, these absolute command lines only, exact arguments; shells, editors, "
        "pagers, interpreters, wildcards and ALL are refused",
    )
    sudoers_name: Annotated[
        str,
        Pattern(r"[A-Za-z0-9_-]+", "letters, digits, '-' or '_' (sudo ignores files with '.' in their name)"),
    ] = Field("quant-deploy", description="/etc/sudoers.d/<name>")
    engine: Literal["local", "socket"] = Field(
        "local",
        description="local: this host runs dockerd (systemd as PID 1); socket: it uses the "
        "engine whose socket is at docker_socket",
    )
    docker_socket: str = "/var/run/docker.sock"
    docker_gid: Annotated[int, Field(ge=1, le=65533)] | Literal["socket"] | None = Field(
        None, description='pin the docker group\'s gid; "socket": the socket\'s gid (engine "socket" default)'
    )
    packages: tuple[str, ...] = Field(("docker.io",), description="from the distribution, no recommends")
    log_max_size: Size = Field(
        10 * 1024 * 1024, gt=0, le=1 << 30, description="daemon.json log-opts max-size"
    )
    log_max_file: StrictInt = Field(3, ge=1, le=100, description="daemon.json log-opts max-file")
    allowed_roots: tuple[str, ...] = Field(
        ("/opt", "/srv"),
        description="stack_dir (and its files) must lie strictly below one of these or the deploy "
        "user's home; home below /home or one of these; never /, /home, /var or a system directory",
    )
    stack_dir: str = "/opt/quant-stack"
    stack_owner: UserName | None = Field(None, description="None: the deploy user")
    directories: tuple[str, ...] = Field(
        ("data/postgres", "data/minio", "data/redis", "logs", "backups"), description="relative to stack_dir"
    )
    compose_file: FileName = Field("docker-compose.yml", description="relative to stack_dir, or absolute")
    compose_project: FileName | None = Field(
        None, description="compose names the project after stack_dir's folder; if set, it must be that name"
    )
    compose: dict[str, Any] | None = Field(
        None,
        description="None: postgres, minio, redis and MLflow from the host's mlflow settings; "
        "or a whole compose document (secrets only as ${VAR})",
    )
    mlflow_version: FileName = Field("2.9.2", description="the MLflow version in the mlflow image")
    verify: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _socket_gid(cls, data: Any) -> Any:
        # A shared socket is usable only by a group with its gid.
        if isinstance(data, Mapping) and data.get("engine") == "socket" and data.get("docker_gid") is None:
            return {**data, "docker_gid": "socket"}
        return data

    @model_validator(mode="after")
    def _project_is_the_folder(self) -> OnboardSettings:
        # Compose v1 refuses a top-level `name:`; v1 and v2 both name the project after the
        # compose file's folder, so that is the one name that holds for either tool.
        folder = re.sub(r"[^-_a-z0-9]", "", self.stack_dir.rstrip("/").rsplit("/", 1)[-1].lower())
        if self.compose_project is not None and self.compose_project != folder:
            raise ValueError(
                f"compose_project: compose names the project after stack_dir's folder ({folder!r}); "
                "name stack_dir's folder after the project, or remove compose_project"
            )
        return self

    @field_validator("authorized_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> tuple[str, ...]:
        if not value or not isinstance(value, (list, tuple)):
            raise ValueError(
                'at least one public key is required (a line, or {"file": "/path/on/controller.pub"})'
            )
        keys: list[str] = []
        problems: list[str] = []
        for index, item in enumerate(value):
            where = f"authorized_keys[{index}]"
            found, trouble = read_public_keys(item, where)
            problems += trouble
            for key in found:
                if "PRIVATE KEY" in key:
                    problems.append(f"{where}: is a private key; give the public one")
                elif not _KEY_RE.fullmatch(key):
                    problems.append(f"{where}: not an OpenSSH public key line ({key[:30]!r}...)")
                else:
                    keys.append(key)
        if problems:
            raise ValueError("\n".join(problems))
        return tuple(dict.fromkeys(keys))

    @field_validator("user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if value == "root":
            raise ValueError("'root' is not a valid non-root user name")
        return value

    @field_validator("shell", "home", "stack_dir", "docker_socket")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or _unsafe(value):
            raise ValueError(f"{value!r} is not an absolute path without spaces or quotes")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _paths_within_roots(self) -> OnboardSettings:
        problems = [
            f"allowed_roots[{i}]: {why}"
            for i, root in enumerate(self.allowed_roots)
            if (why := root_problem(root))
        ]
        if problems:
            raise ValueError("\n".join(problems))
        paths = dict(self.owned_paths())
        if self.compose_file.startswith("/") and not self.compose_path.startswith(self.stack_dir + "/"):
            problems.append(
                f"compose_file: {self.compose_file!r} is not inside stack_dir ({self.stack_dir!r}); "
                "give it relative to stack_dir"
            )
            paths.pop("compose_file")
        if outside_roots(self.stack_dir, self.path_roots("stack_dir")):
            # what lies inside it is refused with it, in one line
            paths = {k: v for k, v in paths.items() if k in ("stack_dir", "home")}
        for key, path in paths.items():
            why = outside_roots(path, self.path_roots(key))
            if why:
                problems.append(f"{key}: {why}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _roots_list(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(i, str) for i in value):
            raise ValueError("expected a non-empty list of absolute paths")
        return value

    @field_validator("sudo_commands", "packages", "directories", mode="before")
    @classmethod
    def _string_list(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not all(isinstance(i, str) for i in value):
            raise ValueError("expected a list of strings")
        return value

    @field_validator("sudo_commands")
    @classmethod
    def _narrow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems = [
            f"sudo_commands[{i}]: {why}" for i, c in enumerate(value) if (why := sudo_command_problem(c))
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator("docker_gid", mode="before")
    @classmethod
    def _gid(cls, value: Any) -> Any:
        if value is None or value == "socket":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 65534:
            raise ValueError(f'{value!r} must be a group id, "socket" or null')
        return value

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not all(_PACKAGE_RE.fullmatch(p) for p in value):
            raise ValueError(f"{list(value)!r} is not a list of Debian package names")
        if not any(p.split("=")[0] == "docker.io" for p in value):
            raise ValueError("must include docker.io (the engine and CLI from Debian)")
        return value

    @field_validator("directories")
    @classmethod
    def _directories(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for folder in value:
            if not folder or folder.startswith("/") or ".." in folder.split("/") or _unsafe(folder):
                raise ValueError(f"{folder!r} must be a plain relative path inside stack_dir")
        return value

    @field_validator("compose_file", "compose_project", "mlflow_version")
    @classmethod
    def _no_parent(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError(f"{value!r} is not valid (no '..')")
        return value

    @field_validator("compose")
    @classmethod
    def _compose(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            problems = compose_problems(value)
            if problems:
                raise ValueError("\n".join(problems))
        return value

    @property
    def home_dir(self) -> str:
        return self.home or f"/home/{self.user}"

    def owned_paths(self) -> list[tuple[str, str]]:
        """(setting, path) for what onboarding creates and gives to the deploy user."""
        paths = [("stack_dir", self.stack_dir)]
        paths += [(f"directories[{i}]", f"{self.stack_dir}/{d}") for i, d in enumerate(self.directories)]
        paths += [("compose_file", self.compose_path), ("home", self.home_dir)]
        return paths

    def path_roots(self, key: str) -> tuple[str, ...]:
        """Where the path of setting ``key`` may lie: the home below /home or an allowed root,
        the stack below an allowed root or the deploy user's home."""
        if key == "home":
            return ("/home", *self.allowed_roots)
        return (*self.allowed_roots, self.home_dir)

    @property
    def compose_path(self) -> str:
        return (
            self.compose_file
            if self.compose_file.startswith("/")
            else f"{self.stack_dir}/{self.compose_file}"
        )

    @property
    def sudoers_path(self) -> str:
        return f"/etc/sudoers.d/{self.sudoers_name}"

    @property
    def owner(self) -> str:
        return self.stack_owner or self.user
