"""
Version-aware ``mlflow server`` settings: which server MLflow runs (gunicorn or uvicorn),
which flags make our settings take effect for that version, and how to count its workers.

Facts this module relies on (read in MLflow's source, mlflow/cli.py and mlflow/server/__init__.py):

- 2.x and 3.0-3.2 always serve with gunicorn. The child command is
  ``gunicorn <--gunicorn-opts split> -b HOST:PORT -w WORKERS mlflow.server:app``; ``--workers``
  defaults to 4. ``--gunicorn-opts`` reads ``MLFLOW_GUNICORN_OPTS`` when the flag is absent.
- Gunicorn's precedence: command line > ``GUNICORN_CMD_ARGS`` > config file. So options we pass
  in ``--gunicorn-opts`` and ``-w`` win over a stale ``GUNICORN_CMD_ARGS``, but options we do not
  pass (``--threads``, ``--preload`` ...) would still be merged in from it; ``--threads`` > 1
  even turns the sync worker into gthread. We therefore blank it (empty = no options).
- 3.3.0 made FastAPI + uvicorn the default (mlflow PR #17038, released 2025-08-13). Gunicorn
  runs only when ``--gunicorn-opts`` (or ``MLFLOW_GUNICORN_OPTS``) is given; otherwise
  ``python -m uvicorn <--uvicorn-opts split> --host H --port P --workers N
  mlflow.server.fastapi_app:app``, and ``GUNICORN_CMD_ARGS`` is never read. Giving more than
  one of ``--gunicorn-opts/--uvicorn-opts/--waitress-opts`` is a usage error, so a stale
  ``MLFLOW_GUNICORN_OPTS`` would silently switch servers or break startup: we blank it too.
  Click ignores an environment variable whose value is empty.
- The security middleware flags (``--allowed-hosts``, ``--cors-allowed-origins``,
  ``--disable-security-middleware``) work only with uvicorn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.core.container_spec import ContainerSpec, normalize_port

if TYPE_CHECKING:  # settings are handed in; core imports no settings layer
    from tasks.settings.mlflow import MlflowSettings

UVICORN_DEFAULT_SINCE = (3, 3)
# The label saying which MLflow version a container (or a compose service) was set up for.
VERSION_LABEL = "io.quantlab.mlflow-version"

# Set to "" in the container env whatever the image or an old container had (see above).
NEUTRALIZED_ENV = {"GUNICORN_CMD_ARGS": "", "MLFLOW_GUNICORN_OPTS": "", "MLFLOW_UVICORN_OPTS": ""}

# Recent 3.x servers with a database store start a job runner and several huey consumers by default,
# each a full MLflow process (measured with 3.17.2: ~1.7 GiB in all, OOM-killed under 1 GiB). The
# tracking server does not need them; settings.env may turn them back on with "true".
JOB_EXECUTION_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

UVICORN_ONLY_FLAGS = ("--allowed-hosts", "--cors-allowed-origins", "--disable-security-middleware")

_VERSION_RE = re.compile(r"version\s+(\d+)\.(\d+)(?:\.(\d+))?")
_BARE_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:[.+-]?[A-Za-z0-9.+-]*)?")


def parse_mlflow_version(text: str) -> tuple[int, int, int]:
    """
    ``mlflow --version`` prints ``mlflow, version 2.9.2`` (click's version option); also
    accepts a bare ``3.5.1`` or ``3.1.0rc0``. Warnings printed before the line are skipped.
    """
    match = _VERSION_RE.search(text or "")
    if match is None:
        match = _BARE_VERSION_RE.fullmatch((text or "").strip())
    if match is None:
        raise ValueError(f"cannot read an MLflow version from {text!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True)
class ServerSpec:
    """What the container must run so the settings take effect for this MLflow version."""

    kind: str  # "gunicorn" | "uvicorn"
    command: tuple[str, ...]
    env: Mapping[str, str]
    notes: tuple[str, ...]
    workers: int
    mlflow_version: tuple[int, int, int]


def choose_server(settings: MlflowSettings, version: tuple[int, int, int]) -> str:
    uvicorn_default = version[:2] >= UVICORN_DEFAULT_SINCE
    if settings.server == "auto":
        return "uvicorn" if uvicorn_default else "gunicorn"
    if settings.server == "uvicorn" and not uvicorn_default:
        raise ValueError(
            f"mlflow.server: 'uvicorn' needs MLflow 3.3 or later; the image has "
            f"{'.'.join(map(str, version))} (use 'auto' or 'gunicorn')"
        )
    return settings.server


def gunicorn_opts(settings: MlflowSettings) -> str:
    # Workers are not here: MLflow appends `-w N` from --workers after these options.
    return (
        f"--timeout {settings.timeout} --max-requests {settings.max_requests} "
        f"--max-requests-jitter {settings.max_requests_jitter} "
        f"--worker-class {settings.worker_class}"
    )


def _uvicorn_opts_and_notes(settings: MlflowSettings) -> tuple[str, list[str]]:
    opts, notes = [], []
    if settings.max_requests and settings.workers > 1:
        # Uvicorn's supervisor (>= 0.30) restarts a worker that reached its limit.
        opts.append(f"--limit-max-requests {settings.max_requests}")
    elif settings.max_requests:
        notes.append(
            f"max_requests={settings.max_requests} not applied: with 1 worker uvicorn runs "
            "without a supervisor, so reaching the limit would stop the server"
        )
    notes.append(
        f"timeout={settings.timeout} not applied: it is gunicorn's worker timeout; uvicorn "
        "has no per-worker kill timeout"
    )
    if settings.max_requests_jitter:
        notes.append(
            f"max_requests_jitter={settings.max_requests_jitter} not applied: only uvicorn "
            ">= 0.41 has --limit-max-requests-jitter, and older ones refuse the flag"
        )
    notes.append(
        f"worker_class={settings.worker_class} not applied: uvicorn workers are asyncio "
        "processes, there is no worker class"
    )
    return " ".join(opts), notes


def server_spec(settings: MlflowSettings, mlflow_version: str | tuple[int, ...]) -> ServerSpec:
    """
    The ``mlflow server`` command and env for the MLflow version in the image.

    Example (MLflow 2.9.2, defaults)::

        mlflow server --host 0.0.0.0 --port 5000 --workers 2
            --gunicorn-opts "--timeout 60 --max-requests 100 --max-requests-jitter 10 --worker-class sync"
    """
    if isinstance(mlflow_version, str):
        version = parse_mlflow_version(mlflow_version)
    else:
        major, minor, patch = (*mlflow_version, 0, 0, 0)[:3]  # (3, 6) is (3, 6, 0)
        version = (major, minor, patch)
    kind = choose_server(settings, version)
    notes: list[str] = []

    command = ["mlflow", "server", "--host", settings.host, "--port", str(settings.port)]
    # A backend URI with a password is refused by settings; the usual way to pass it is
    # secret_env MLFLOW_BACKEND_STORE_URI, which `mlflow server` reads when the flag is absent.
    for flag, value in (
        ("--backend-store-uri", settings.backend_store_uri),
        ("--default-artifact-root", settings.default_artifact_root),
        ("--artifacts-destination", settings.artifacts_destination),
    ):
        if value:
            command += [flag, value]
    command += ["--workers", str(settings.workers)]

    if kind == "gunicorn":
        command += ["--gunicorn-opts", gunicorn_opts(settings)]
        if version[:2] >= UVICORN_DEFAULT_SINCE:
            notes.append(
                "gunicorn forced (server: gunicorn) on MLflow >= 3.3: MLflow logs a "
                "FutureWarning, and uvicorn-only features (security middleware flags) are off"
            )
            used = [a for a in settings.extra_args if a.split("=", 1)[0] in UVICORN_ONLY_FLAGS]
            if used:
                raise ValueError(
                    f"mlflow.extra_args: {', '.join(used)} work only with uvicorn; "
                    "drop them or use server: auto"
                )
    else:
        opts, uvicorn_notes = _uvicorn_opts_and_notes(settings)
        notes += uvicorn_notes
        if opts:
            command += ["--uvicorn-opts", opts]

    command += list(settings.extra_args)
    env = dict(NEUTRALIZED_ENV)
    if version[0] >= 3 and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in settings.env:
        env.update(JOB_EXECUTION_ENV)
        notes.append(
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: the job runner's worker processes "
            "do not fit the memory limit; set it to true in env to keep them"
        )
    return ServerSpec(
        kind=kind,
        command=tuple(command),
        env=env,
        notes=tuple(notes),
        workers=settings.workers,
        mlflow_version=version,
    )


def desired_container(
    settings: MlflowSettings, server: ServerSpec, secret_values: Mapping[str, str]
) -> ContainerSpec:
    """The container spec for these settings; secret values come from resolve_secret_env."""
    env = {**server.env, **settings.env, **secret_values}
    return ContainerSpec(
        name=settings.container_name,
        image=settings.image,
        command=server.command,
        env=env,
        secret_env_keys=frozenset(secret_values),
        labels=dict(settings.labels),
        memory=settings.memory_limit,
        memory_reservation=settings.memory_reservation,
        restart_policy=settings.restart_policy,
        ports=tuple(sorted(normalize_port(p) for p in settings.ports)),
        networks=(settings.network,) if settings.network else (),
        init=settings.init,
    )


# -- counting workers -----------------------------------------------------------------------

# Lists "PID PPID ARGS" inside the container; falls back to /proc when the image has no
# procps (a debootstrap minbase image has none).
PROCESS_LIST_COMMAND = (
    "if command -v ps >/dev/null 2>&1; then ps -eo pid,ppid,args; else "
    "for d in /proc/[0-9]*; do "
    "ppid=$(sed -n 's/^PPid:[[:space:]]*//p' \"$d/status\" 2>/dev/null); "
    "args=$(tr '\\000\\n' '  ' < \"$d/cmdline\" 2>/dev/null); "
    'if [ -n "$ppid" ] && [ -n "$args" ]; then printf \'%s %s %s\\n\' "${d#/proc/}" "$ppid" "$args"; fi; '
    "done; fi"
)


def expected_worker_processes(spec: ServerSpec) -> int:
    """
    What ``count_workers`` must report once the server is up: the worker processes only,
    not gunicorn's master nor uvicorn's supervisor (nor multiprocessing's resource tracker).
    """
    return spec.workers


def _parse_ps(ps_output: str) -> list[tuple[int, int, str]]:
    rows = []
    for line in ps_output.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1]), parts[2]))
    return rows


def _runs(args: str, program: str) -> bool:
    """True if the process *is* `program` (not merely mentions it, like --gunicorn-opts)."""
    if args.startswith(f"{program}:"):  # setproctitle, e.g. "gunicorn: worker [app]"
        return True
    tokens = args.split()
    if any(tok.rsplit("/", 1)[-1] == program for tok in tokens[:2]):
        return True
    return tokens[1:3] == ["-m", program]


def count_workers(ps_output: str, server_kind: str) -> int:
    """
    Count the server's worker processes in ``ps -eo pid,ppid,args`` text
    (or PROCESS_LIST_COMMAND's output).

    gunicorn: workers are forks of the master, so same args; count gunicorn processes whose
    parent is a gunicorn master (a gunicorn process whose own parent is not gunicorn).
    uvicorn: with workers > 1 the supervisor spawns children through multiprocessing
    (``... spawn_main(...) --multiprocessing-fork``); count those, which skips the
    resource tracker. With 1 worker uvicorn serves in its own process: that counts as 1.
    """
    rows = _parse_ps(ps_output)
    if server_kind == "gunicorn":
        gunicorn = {pid: ppid for pid, ppid, args in rows if _runs(args, "gunicorn")}
        masters = {pid for pid, ppid in gunicorn.items() if ppid not in gunicorn}
        return sum(1 for ppid in gunicorn.values() if ppid in masters)
    if server_kind == "uvicorn":
        supervisors = {pid for pid, _, args in rows if _runs(args, "uvicorn")}
        children = [pid for pid, ppid, args in rows if ppid in supervisors and "spawn_main" in args]
        if children:
            return len(children)
        return len(supervisors)
    raise ValueError(f"unknown server kind {server_kind!r}")
