"""Whole-stack verification: containers, PostgreSQL, MLflow, Redis, S3 and the backend, checked on
each target host with tenacity-retried checks (tasks.checks.runner) under one deadline per host.

Every check reads like a sentence (``container qt-mlflow is not OOM-killed``), has a bounded
retry policy, and on failure carries evidence naming the cause. A service the host's ``stack``
data does not list is reported *skipped, with the reason*, never silently passed.

How it stays read-only in pyinfra's eyes (DESIGN principle 4; pyinfra's ``python.call`` always
counts as a change, upstream #1150): :func:`verify` is an operation whose generator does nothing
while pyinfra plans (so ``--dry`` runs no check at all, and the plan shows no change) and runs the
checks when pyinfra *executes* it: pyinfra 3.10 calls an operation's generator again at execution
time (``api/operations.py: for command in op_data.command_generator()``), with
``state.is_executing`` set. All checks pass → the generator yields nothing → "No changes".
A failed check → it yields one ``FunctionCommand`` that logs the failure and returns False: the
operation errors on that host (pyinfra exits non-zero) and, failed, it is not counted a change.

Transport: everything goes through shell commands on the target (``docker`` CLI, ``curl`` or
``python3`` for HTTP), each wrapped in ``timeout N`` and given pyinfra's ``_timeout`` too, so a
hung service or daemon costs at most N seconds an attempt. Secrets (role and Redis passwords)
travel in 0600 files in a fresh 0700 directory on the target, fed on stdin and removed by the
same command: never on a command line, never in output (evidence is scrubbed of them too).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import secrets as _secrets
import shlex
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, operation
from pyinfra.api.exceptions import PyinfraError

from tasks.checks.runner import Broken, CheckResult, NotYet, RetryPolicy, run_check
from tasks.core.mlflow_server import PROCESS_LIST_COMMAND, count_workers
from tasks.core.pg_exec import PgTargetError, pgpass_line, resolve_password

SERVICES = ("postgres", "mlflow", "redis", "s3", "backend")

# Known failure signatures (until the diagnose catalog lands): name -> pattern (case-sensitive
# where the source prints a fixed text). Host data may add more (`log_signatures`).
SIGNATURES: dict[str, str] = {
    "SIGKILL": r"was sent SIGKILL|Killed process \d+|signal 9|SIGKILL",
    "WORKER TIMEOUT": r"WORKER TIMEOUT",
    "password authentication failed": r"password authentication failed",
    "WatchfilesRustInternalError": r"WatchfilesRustInternalError",
}

DEFAULTS: dict[str, Any] = {
    "deadline": 240,  # seconds for all checks on one host
    "command_timeout": 15,  # seconds for one command on the target (docker exec, psql, ...)
    "http_timeout": 5,  # seconds for one HTTP request
    "retry_attempts": 5,  # per check: attempts ...
    "retry_seconds": 20,  # ... and seconds, whichever runs out first
    "retry_wait": 2,  # seconds between attempts
    "restart_window": 10,  # restart counts are read at the start and at least this long after
    "memory_warn_percent": 85,
    "memory_fail_percent": 95,
    "logs_since": "15m",  # docker logs --since: a duration (15m, 2h) or an RFC 3339 time
    "log_signatures": {},  # extra {name: regex}
    "report_path": None,  # a JSON report on the controller (or env QUANTLAB_VERIFY_REPORT)
    "services": {},
}
SERVICE_KEYS: dict[str, set[str]] = {
    "postgres": {"container", "access", "host", "port", "superuser", "superuser_password", "os_user",
                 "container_port", "roles", "connections_margin", "database"},
    "mlflow": {"container", "url", "container_port", "workers", "artifacts"},
    "redis": {"container", "password"},
    "s3": {"container", "url", "container_port", "health_path", "bucket"},
    "backend": {"container", "url", "container_port", "health_path", "db_path"},
}
_DURATION = re.compile(r"\d+(\.\d+)?(ns|us|ms|s|m|h)\Z")
_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_URL = re.compile(r"https?://[^\s'\"]+\Z")
_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
REPORT_ENV = "QUANTLAB_VERIFY_REPORT"
LOGS_SINCE_ENV = "QUANTLAB_VERIFY_SINCE"
_RUN_ID = uuid.uuid4().hex  # one pyinfra run: reports from its hosts are merged, older ones replaced


# --- settings ----------------------------------------------------------------------------------

class StackSettingsError(PyinfraError, ValueError):
    def __init__(self, host_name: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{host_name}: invalid stack settings:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Role:
    name: str
    password: Mapping[str, str]  # {"env": VAR} | {"file": path}
    database: str = "postgres"


@dataclass(frozen=True)
class StackSettings:
    deadline: float = DEFAULTS["deadline"]
    command_timeout: int = DEFAULTS["command_timeout"]
    http_timeout: int = DEFAULTS["http_timeout"]
    retry: RetryPolicy = RetryPolicy(DEFAULTS["retry_attempts"], DEFAULTS["retry_seconds"],
                                     DEFAULTS["retry_wait"])
    restart_window: float = DEFAULTS["restart_window"]
    memory_warn_percent: float = DEFAULTS["memory_warn_percent"]
    memory_fail_percent: float = DEFAULTS["memory_fail_percent"]
    logs_since: str = DEFAULTS["logs_since"]
    signatures: Mapping[str, str] = field(default_factory=lambda: dict(SIGNATURES))
    report_path: str | None = None
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _number(problems, key, value, minimum, maximum=None, integer=False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        problems.append(f"stack.{key}: expected {'an integer' if integer else 'a number'} {bound}, "
                        f"got {value!r}")
        return None
    return value


def _password_source(problems: list[str], where: str, value: Any) -> Mapping | None:
    if isinstance(value, (str, bytes)):
        problems.append(f"{where}: a plaintext password is refused; use {{\"env\": VAR}} or "
                        "{\"file\": path}")
        return None
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in ("env", "file"):
        problems.append(f"{where}: expected {{\"env\": VAR}} or {{\"file\": path}}")
        return None
    return dict(value)


def _roles_from_db_settings(data: Mapping) -> list[dict]:
    """Login roles with a password from the host's `db_roles` (deploys/db_users.py), each with
    the first database it is granted CONNECT on (else postgres)."""
    roles = []
    for item in data.get("db_roles") or []:
        if not isinstance(item, Mapping) or item.get("present", True) is False \
                or item.get("login", True) is False or not item.get("password"):
            continue
        database = "postgres"
        for grant in data.get("db_grants") or []:
            if isinstance(grant, Mapping) and grant.get("role") == item.get("name") \
                    and not grant.get("schema") and {"CONNECT", "ALL"} & set(grant.get("privileges") or []):
                database = grant.get("database") or database
                break
        roles.append({"name": item.get("name"), "password": item.get("password"), "database": database})
    return roles


def _mlflow_workers(data: Mapping) -> int | None:
    merged = {**(data.get("mlflow_defaults") or {}), **(data.get("mlflow") or {})}
    value = merged.get("workers")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def stack_settings(host_name: str, data: Mapping[str, Any],
                   environ: Mapping[str, str] | None = None) -> StackSettings:
    """Validated settings: group `stack_defaults` overridden key by key by the host's `stack`;
    a postgres service takes what it does not say from the host's `postgres` section and its
    roles from `db_roles`; mlflow's expected workers from the `mlflow` settings. All problems are
    reported at once, before any check runs."""
    environ = os.environ if environ is None else environ
    defaults = data.get("stack_defaults") or {}
    own = data.get("stack") or {}
    problems: list[str] = []
    for where, section in (("stack_defaults", defaults), ("stack", own)):
        if not isinstance(section, Mapping):
            problems.append(f"{where}: expected a mapping, got {type(section).__name__}")
    if problems:
        raise StackSettingsError(host_name, problems)
    merged = {**DEFAULTS, **defaults, **own}
    for key in merged:
        if key not in DEFAULTS:
            problems.append(f"stack.{key}: unknown setting (known: {', '.join(sorted(DEFAULTS))})")

    deadline = _number(problems, "deadline", merged["deadline"], 1)
    command_timeout = _number(problems, "command_timeout", merged["command_timeout"], 1, 600, True)
    http_timeout = _number(problems, "http_timeout", merged["http_timeout"], 1, 600, True)
    attempts = _number(problems, "retry_attempts", merged["retry_attempts"], 1, 1000, True)
    seconds = _number(problems, "retry_seconds", merged["retry_seconds"], 0)
    wait = _number(problems, "retry_wait", merged["retry_wait"], 0, 600)
    window = _number(problems, "restart_window", merged["restart_window"], 0, 3600)
    warn = _number(problems, "memory_warn_percent", merged["memory_warn_percent"], 1, 100)
    fail = _number(problems, "memory_fail_percent", merged["memory_fail_percent"], 1, 100)
    if warn is not None and fail is not None and warn > fail:
        problems.append(f"stack.memory_warn_percent ({warn}) is above memory_fail_percent ({fail})")
    since = environ.get(LOGS_SINCE_ENV) or merged["logs_since"]
    if not isinstance(since, str) or not (_DURATION.match(since) or _parse_time(since)):
        problems.append(f"stack.logs_since: expected a duration like 15m or 2h, or an RFC 3339 time, "
                        f"got {since!r}")
    signatures = dict(SIGNATURES)
    extra = merged["log_signatures"]
    if not isinstance(extra, Mapping):
        problems.append("stack.log_signatures: expected {name: regex}")
    else:
        for name, pattern in extra.items():
            try:
                if not pattern or re.compile(pattern).match(""):
                    raise re.error("matches every line")
                signatures[str(name)] = pattern
            except (re.error, TypeError) as exc:
                problems.append(f"stack.log_signatures.{name}: bad pattern {pattern!r}: {exc}")
    report = environ.get(REPORT_ENV) or merged["report_path"]
    if report is not None and not isinstance(report, str):
        problems.append(f"stack.report_path: expected a path, got {report!r}")

    services: dict[str, dict] = {}
    given = merged["services"]
    if not isinstance(given, Mapping):
        problems.append("stack.services: expected {service: {...}}")
        given = {}
    for service, conf in given.items():
        where = f"stack.services.{service}"
        if service not in SERVICE_KEYS:
            problems.append(f"{where}: unknown service (known: {', '.join(SERVICES)})")
            continue
        if conf is None or conf is False:
            continue  # listed as not expected here
        if not isinstance(conf, Mapping):
            problems.append(f"{where}: expected a mapping")
            continue
        for key in conf:
            if key not in SERVICE_KEYS[service]:
                problems.append(f"{where}.{key}: unknown setting "
                                f"(known: {', '.join(sorted(SERVICE_KEYS[service]))})")
        conf = dict(conf)
        if service == "postgres":
            pg = data.get("postgres") or {}
            for key in ("container", "access", "host", "port", "superuser", "superuser_password"):
                if key not in conf and key in pg:
                    conf[key] = pg[key]
            conf.setdefault("access", "docker")
            conf.setdefault("superuser", "postgres")
            conf.setdefault("os_user", "postgres")
            conf.setdefault("container_port", 5432)
            conf.setdefault("connections_margin", 10)
            conf.setdefault("database", "postgres")
            if conf["access"] not in ("docker", "psql"):
                problems.append(f"{where}.access: expected docker or psql, got {conf['access']!r}")
            if conf["access"] == "psql":
                if not conf.get("host") or not isinstance(conf.get("port"), int):
                    problems.append(f"{where}: psql access needs host and port")
                if conf.get("superuser_password") is not None:
                    conf["superuser_password"] = _password_source(
                        problems, f"{where}.superuser_password", conf["superuser_password"])
            roles = []
            for i, role in enumerate(conf.get("roles", _roles_from_db_settings(data))):
                rwhere = f"{where}.roles[{i}]"
                if not isinstance(role, Mapping) or not isinstance(role.get("name"), str) \
                        or not _ROLE.match(role["name"]):
                    problems.append(f"{rwhere}: expected {{name, password, database?}} with a plain role name")
                    continue
                source = _password_source(problems, f"{rwhere}.password", role.get("password"))
                if source is not None:
                    roles.append(Role(role["name"], source, role.get("database") or "postgres"))
            conf["roles"] = tuple(roles)
            _number(problems, "services.postgres.connections_margin", conf["connections_margin"], 0,
                    integer=True)
        if service == "mlflow":
            conf.setdefault("container_port", 5000)
            conf.setdefault("artifacts", True)
            if "workers" not in conf:
                conf["workers"] = _mlflow_workers(data)
        if service == "s3":
            conf.setdefault("container_port", 9000)
            conf.setdefault("health_path", "/minio/health/live")
        if service == "backend":
            conf.setdefault("container_port", 8000)
            conf.setdefault("health_path", "/health")
            conf.setdefault("db_path", "/health/db")
        if service == "redis" and conf.get("password") is not None:
            conf["password"] = _password_source(problems, f"{where}.password", conf["password"])
        if not isinstance(conf.get("container"), str) or not _CONTAINER.match(conf["container"]):
            needs = service == "redis" or (service == "postgres" and conf.get("access") == "docker") \
                or (service not in ("postgres", "redis") and not conf.get("url"))
            if needs or conf.get("container") is not None:
                problems.append(f"{where}.container: expected a container name, got {conf.get('container')!r}")
        if conf.get("url") is not None and (not isinstance(conf["url"], str) or not _URL.match(conf["url"])):
            problems.append(f"{where}.url: expected http(s)://host:port, got {conf['url']!r}")
        for path_key in ("health_path", "db_path"):
            if path_key in conf and (not isinstance(conf[path_key], str) or not conf[path_key].startswith("/")):
                problems.append(f"{where}.{path_key}: expected a path starting with /")
        services[service] = conf
    if problems:
        raise StackSettingsError(host_name, problems)
    return StackSettings(
        deadline=float(deadline), command_timeout=command_timeout, http_timeout=http_timeout,
        retry=RetryPolicy(attempts, float(seconds), float(wait)), restart_window=float(window),
        memory_warn_percent=float(warn), memory_fail_percent=float(fail), logs_since=since,
        signatures=signatures, report_path=report, services=services)


def _parse_time(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


# --- pure helpers (unit-tested) ----------------------------------------------------------------

class Warned(str):
    """A probe's evidence that holds but deserves attention: the check is reported as warn."""


def timed(command: str, seconds: int) -> str:
    """`command` under coreutils' timeout (TERM after `seconds`, KILL 2 s later)."""
    return f"timeout -k 2 {int(seconds)} sh -c {shlex.quote(command)}"


_PY_HTTP = (
    "import sys, urllib.request, urllib.error\n"
    "m, url, t, body, ctype = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]\n"
    "data = body.encode() if m in ('POST', 'PUT') else None\n"
    "req = urllib.request.Request(url, data=data, method=m, headers={'Content-Type': ctype})\n"
    "try:\n"
    "    r = urllib.request.urlopen(req, timeout=t); code, text = r.status, r.read(8000)\n"
    "except urllib.error.HTTPError as e:\n"
    "    code, text = e.code, e.read(8000)\n"
    "sys.stdout.write(text.decode(errors='replace') + '\\nHTTP %d\\n' % code)\n"
)


def http_command(method: str, url: str, timeout: int, body: str = "",
                 content_type: str = "application/json", container: str | None = None) -> str:
    """A shell command doing one HTTP request and printing the body, then ``HTTP <code>``.
    On the host: curl, else python3. In a container (no published port): its python3."""
    py_args = [method, url, str(timeout), body, content_type]
    python = "python3 -c " + shlex.quote(_PY_HTTP) + " " + " ".join(shlex.quote(a) for a in py_args)
    if container:
        return f"docker exec {shlex.quote(container)} {python}"
    curl = ["curl", "-sS", "-m", str(timeout), "-w", r"\nHTTP %{http_code}\n"]
    if method == "HEAD":
        curl += ["-I"]
    else:
        curl += ["-X", method]
    if method in ("POST", "PUT"):
        curl += ["-H", f"Content-Type: {content_type}", "--data-binary", body]
    curl.append(url)
    return (f"if command -v curl >/dev/null 2>&1; then {shlex.join(curl)}; "
            f"elif command -v python3 >/dev/null 2>&1; then {python}; "
            "else echo 'neither curl nor python3 on this host' >&2; exit 127; fi")


def parse_http(ok: bool, output: str, timeout: int) -> tuple[int, str]:
    """(status, body) from :func:`http_command` output; raises NotYet naming why there was no
    answer (refused, timed out ...)."""
    lines = output.rstrip("\n").splitlines()
    code = 0
    if lines and lines[-1].startswith("HTTP "):
        try:
            code = int(lines[-1][5:].strip())
        except ValueError:
            code = 0
        lines = lines[:-1]
    if code == 0:
        tail = [line.strip() for line in lines if line.strip()]
        if ok is False and not tail:
            raise NotYet(f"no answer within {timeout}s (timed out)")
        reason = tail[-1] if tail else "no answer"
        if "timed out" in reason.lower() or "timeout" in reason.lower():
            reason = f"no answer within {timeout}s ({reason[:160]})"
        raise NotYet(reason[:240])
    return code, "\n".join(lines).strip()


_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4}


def parse_size(text: str) -> int:
    """`docker stats` sizes: 369.1MiB, 1GiB, 512kB, 0B."""
    match = re.match(r"\s*([\d.]+)\s*([A-Za-z]+)\s*\Z", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"unreadable size {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def memory_verdict(usage: int, limit: int, warn_percent: float, fail_percent: float) -> tuple[str, str]:
    """("pass" | "warn" | "fail", evidence) for a container's memory use against its limit."""
    mib = lambda n: f"{n / (1 << 20):.0f} MiB"  # noqa: E731
    if not limit:
        return "pass", f"{mib(usage)} in use, no memory limit set"
    percent = 100.0 * usage / limit
    text = f"{mib(usage)} of {mib(limit)} ({percent:.0f}%)"
    if percent >= fail_percent:
        return "fail", f"{text}: at or above {fail_percent:.0f}% of the limit"
    if percent >= warn_percent:
        return "warn", f"{text}: above the {warn_percent:.0f}% warning level"
    return "pass", text


def oom_kills(text: str) -> int | None:
    """The `oom_kill N` count from cgroup v2 memory.events or v1 memory.oom_control."""
    match = re.search(r"^oom_kill (\d+)", text, re.M)
    return int(match.group(1)) if match else None


def match_signatures(lines: list[str], signatures: Mapping[str, str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    compiled = {name: re.compile(pattern) for name, pattern in signatures.items()}
    for line in lines:
        for name, pattern in compiled.items():
            if pattern.search(line):
                found.setdefault(name, []).append(line.strip())
                break
    return found


def _error_text(body: str, limit: int = 300) -> str:
    """What an error answer says: a JSON body's error/detail/message field, else the body."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "detail", "message", "error_code"):
            if data.get(key):
                return " ".join(str(data[key]).split())[:limit]
    return " ".join(body.split())[:limit]


def redact(text: str, secret_values: list[str]) -> str:
    for value in sorted(set(v for v in secret_values if v), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def totals(results: list[CheckResult]) -> dict[str, int]:
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    counts["total"] = len(results)
    return counts


def format_report(results: list[CheckResult]) -> str:
    """The per-host table: check, target, result, attempts, elapsed, evidence; then totals."""
    columns = ("check", "target", "result", "attempts", "elapsed", "evidence")
    rows = [(r.name, r.target, r.status.upper(), str(r.attempts), f"{r.elapsed:.1f}s",
             r.evidence.replace("\n", " ")[:140]) for r in results]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns[:-1])]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths + [0])).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths + [0])).rstrip() for row in rows]
    t = totals(results)
    lines.append(f"totals: {t['pass']} pass, {t['warn']} warn, {t['fail']} fail, {t['skip']} skip "
                 f"({t['total']} checks)")
    return "\n".join(lines)


def report_dict(host_name: str, results: list[CheckResult], started: float, elapsed: float,
                deadline: float) -> dict:
    return {"host": host_name, "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
            "elapsed": round(elapsed, 2), "deadline": deadline, "totals": totals(results),
            "checks": [{k: v for k, v in asdict(r).items()} | {"elapsed": round(r.elapsed, 2)}
                       for r in results]}


def write_report(path: str | Path, host_report: dict, run_id: str = _RUN_ID) -> None:
    """Merge this host's report into `path` (one file a run, hosts keyed by name; a file left
    by an earlier run is replaced). Written 0600 through a temp file."""
    path = Path(path).expanduser()
    report = {"run_id": run_id, "hosts": {}}
    try:
        old = json.loads(path.read_text())
        if old.get("run_id") == run_id:
            report = old
    except (OSError, ValueError):
        pass
    report["hosts"][host_report["host"]] = host_report
    every = [c for h in report["hosts"].values() for c in h["checks"]]
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for check in every:
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    report["totals"] = {**counts, "total": len(every), "hosts": len(report["hosts"])}
    report["ok"] = counts["fail"] == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(report, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)


# --- running commands on the target ------------------------------------------------------------

class Shell:
    """Commands on the target host: `run(command, timeout)` and `run_with_secret(command,
    secret, timeout)` (the secret on the command's stdin from a 0600 file, removed after).
    Both return (ok, output) and never raise for a failed or timed-out command."""

    def __init__(self, run: Callable[[str, int], tuple[bool, str]],
                 put: Callable[[str, str], bool] | None = None):
        self._run, self._put = run, put
        self.secrets: list[str] = []  # values to scrub from evidence

    def run(self, command: str, timeout: int) -> tuple[bool, str]:
        return self._run(timed(command, timeout), timeout + 5)

    def run_with_secret(self, command: str, secret: str, timeout: int) -> tuple[bool, str]:
        self.secrets.append(secret)
        if self._put is None:
            return False, "this transport cannot upload files"
        folder = f"/tmp/quant-verify-{_secrets.token_hex(8)}"
        ok, out = self._run(f"mkdir -m 0700 {shlex.quote(folder)}", 15)
        if not ok:
            return False, f"cannot create a private folder on the host: {out.strip()[:120]}"
        path = f"{folder}/stdin"
        try:
            if not self._put(secret + "\n", path):
                return False, "uploading the secret file failed"
            full = (f"chmod 0600 {shlex.quote(path)} && {timed(command, timeout)} < {shlex.quote(path)}; "
                    f"rc=$?; rm -rf {shlex.quote(folder)}; exit $rc")
            return self._run(full, timeout + 5)
        finally:
            self._run(f"rm -rf {shlex.quote(folder)}", 15)


def pyinfra_shell(target) -> Shell:
    def run(command: str, timeout: int) -> tuple[bool, str]:
        try:
            ok, output = target.run_shell_command(StringCommand(command), print_output=False,
                                                print_input=False, _timeout=timeout)
        except (TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc or 'timed out'}"
        return ok, output.stdout if ok else output.output

    def put(content: str, path: str) -> bool:
        return bool(target.put_file(io.BytesIO(content.encode()), path, print_output=False))

    return Shell(run, put)


# --- the checks --------------------------------------------------------------------------------

Check = tuple[str, str, Callable[[], str], RetryPolicy]
ONCE = RetryPolicy(attempts=1, seconds=0, wait=0)


class Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    @property
    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def clip(self, policy: RetryPolicy) -> RetryPolicy:
        return RetryPolicy(policy.attempts, max(0.0, min(policy.seconds, self.left)), policy.wait)


class StackChecker:
    """Builds and runs the checks for one host's settings."""

    def __init__(self, shell: Shell, settings: StackSettings, environ: Mapping[str, str] | None = None):
        self.shell, self.s = shell, settings
        self.environ = os.environ if environ is None else environ
        self.results: list[CheckResult] = []
        self.deadline = Deadline(settings.deadline)
        self.inspected: dict[str, dict] = {}
        self.first_restarts: dict[str, tuple[int, float]] = {}

    # running
    def check(self, name: str, target: str, probe: Callable[[], str], policy: RetryPolicy | None = None):
        policy = policy or self.s.retry
        if self.deadline.left <= 0:
            result = CheckResult(name, target, "fail", evidence=f"not run: the {self.s.deadline:.0f}s "
                                 "deadline for this host had passed")
        else:
            result = run_check(name, target, probe, self.deadline.clip(policy))
            if result.status == "pass" and isinstance(result.evidence, Warned):
                result.status = "warn"
        result.evidence = redact(str(result.evidence), self.shell.secrets)
        result.reasons = [redact(str(r), self.shell.secrets) for r in result.reasons]
        self.results.append(result)
        return result

    def skip(self, name: str, target: str, reason: str):
        self.results.append(CheckResult(name, target, "skip", evidence=reason))

    def sh(self, command: str, timeout: int | None = None) -> tuple[bool, str]:
        return self.shell.run(command, timeout or self.s.command_timeout)

    # containers
    def _inspect(self, name: str) -> dict:
        ok, out = self.sh(f"docker inspect --type container {shlex.quote(name)}")
        if not ok:
            text = out.strip()
            if "No such" in text or "no such" in text:
                raise Broken(f"container {name} does not exist")
            raise NotYet(f"docker inspect failed: {text[-160:] or 'timed out'}")
        try:
            data = json.loads(out)[0]
        except (ValueError, IndexError):
            raise NotYet(f"unreadable docker inspect output: {out.strip()[:120]}")
        self.inspected[name] = data
        return data

    def _present(self, name: str):
        def probe():
            data = self._inspect(name)
            self.first_restarts.setdefault(name, (int(data.get("RestartCount") or 0), time.monotonic()))
            return f"image {data.get('Config', {}).get('Image', '?')}, created {data.get('Created', '?')[:19]}"
        return probe

    def _running(self, name: str):
        def probe():
            state = self._inspect(name)["State"]
            if state.get("Restarting"):
                raise NotYet(f"restarting (last exit code {state.get('ExitCode')})")
            if state.get("Status") != "running":
                oom = ", OOM-killed" if state.get("OOMKilled") else ""
                error = f", {state['Error']}" if state.get("Error") else ""
                raise Broken(f"{state.get('Status')} (exit code {state.get('ExitCode')}{oom}{error}, "
                             f"finished {str(state.get('FinishedAt', '?'))[:19]})")
            return f"running since {str(state.get('StartedAt', '?'))[:19]}"
        return probe

    def _healthy(self, name: str):
        def probe():
            health = self._inspect(name)["State"].get("Health") or {}
            status = health.get("Status")
            last = (health.get("Log") or [{}])[-1]
            detail = str(last.get("Output", "")).strip().replace("\n", " ")[:120]
            if status == "healthy":
                return f"healthy (streak of failures: {health.get('FailingStreak', 0)})"
            raise NotYet(f"health {status}: last probe exit {last.get('ExitCode')} {detail}".strip())
        return probe

    def _not_oom(self, name: str):
        def probe():
            state = self._inspect(name)["State"]
            cat = ("cat /sys/fs/cgroup/memory.events 2>/dev/null "
                   "|| cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null")
            kills = None
            if state.get("Status") == "running":
                ok, out = self.sh(f"docker exec {shlex.quote(name)} sh -c {shlex.quote(cat)}")
                kills = oom_kills(out) if ok else None
            problems = []
            if state.get("OOMKilled"):
                problems.append(f"OOM-killed (Docker's State.OOMKilled, exit code {state.get('ExitCode')})")
            if kills:
                problems.append(f"the kernel OOM-killed {kills} process(es) in its memory cgroup "
                                "(SIGKILL: out of memory)")
            if problems:
                raise Broken("; ".join(problems))
            where = "no OOM kill in its memory cgroup" if kills == 0 else "cgroup OOM counter unreadable"
            return f"State.OOMKilled false, {where}"
        return probe

    def _memory(self, name: str):
        def probe():
            limit = int(self._inspect(name).get("HostConfig", {}).get("Memory") or 0)
            ok, out = self.sh(f"docker stats --no-stream --format '{{{{.MemUsage}}}}' {shlex.quote(name)}")
            if not ok:
                raise NotYet(f"docker stats failed: {out.strip()[-160:] or 'timed out'}")
            try:
                usage = parse_size(out.strip().splitlines()[-1].split("/")[0])
            except (ValueError, IndexError):
                raise NotYet(f"unreadable docker stats output: {out.strip()[:80]}")
            verdict, text = memory_verdict(usage, limit, self.s.memory_warn_percent,
                                           self.s.memory_fail_percent)
            if verdict == "fail":
                raise Broken(text)
            return Warned(text) if verdict == "warn" else text
        return probe

    def _logs(self, name: str):
        pattern = "|".join(f"({p})" for p in self.s.signatures.values())
        marker = "quantlab-logs-rc="
        command = (f"{{ docker logs --since {shlex.quote(self.s.logs_since)} {shlex.quote(name)} 2>&1; "
                   f"echo \"{marker}$?\"; }} | grep -E {shlex.quote(pattern + '|^' + marker)} | tail -n 200")

        def probe():
            ok, out = self.sh(command)
            lines = out.rstrip("\n").splitlines()
            if not lines or not lines[-1].startswith(marker):
                raise NotYet(f"reading the logs failed: {out.strip()[-160:] or 'timed out'}")
            if lines[-1] != f"{marker}0":
                raise NotYet(f"docker logs failed ({lines[-1][len(marker):]})")
            found = match_signatures(lines[:-1], self.s.signatures)
            if found:
                summary = "; ".join(f"{len(hits)}x {sig}" for sig, hits in found.items())
                last = next(iter(found.values()))[-1]
                raise Broken(f"since {self.s.logs_since}: {summary} (e.g. {last[-160:]!r})")
            return f"no known failure signature since {self.s.logs_since}"
        return probe

    def _restarts_stable(self, name: str):
        def probe():
            first, at = self.first_restarts[name]
            wait = self.s.restart_window - (time.monotonic() - at)
            if wait > 0:
                time.sleep(min(wait, max(0.0, self.deadline.left)))
            now = int(self._inspect(name).get("RestartCount") or 0)
            span = time.monotonic() - at
            if now != first:
                raise Broken(f"restart count went {first} -> {now} within {span:.0f}s")
            return f"restart count {now}, unchanged over {span:.0f}s"
        return probe

    def container_checks(self, name: str) -> bool:
        """Present, running, healthy (if it has a healthcheck), not OOM-killed, memory below its
        limit. False when the container is absent or not running: the service's own checks
        would only repeat that, so the caller skips them with this reason."""
        if self.check(f"container {name} is present", name, self._present(name),
                      RetryPolicy(3, 10, 1)).status != "pass":
            return False
        running = self.check(f"container {name} is running", name, self._running(name)).status == "pass"
        if running and (self.inspected.get(name, {}).get("State") or {}).get("Health") is not None:
            self.check(f"container {name} is healthy", name, self._healthy(name))
        self.check(f"container {name} is not OOM-killed", name, self._not_oom(name), ONCE)
        if running:
            self.check(f"container {name} memory is below its limit", name, self._memory(name),
                       RetryPolicy(2, 10, 1))
        return running

    # HTTP
    def http(self, conf: Mapping, method: str, path: str, body: str = "",
             content_type: str = "application/json") -> tuple[int, str, str]:
        if conf.get("url"):
            url, inside = conf["url"].rstrip("/") + path, None
        else:
            url, inside = f"http://127.0.0.1:{conf['container_port']}{path}", conf["container"]
        command = http_command(method, url, self.s.http_timeout, body, content_type, inside)
        ok, out = self.sh(command, self.s.http_timeout + 3)
        code, text = parse_http(ok, out, self.s.http_timeout)
        return code, text, f"{method} {url if not inside else path + ' (in ' + inside + ')'}"

    def _http_probe(self, conf, path: str, expect: str | None = None, method: str = "GET",
                    accept: tuple[int, ...] = (200,)):
        def probe():
            code, body, what = self.http(conf, method, path)
            flat = " ".join(body.split())
            if code not in accept:
                raise NotYet(f"{what} -> HTTP {code}: {_error_text(body)}")
            if expect and expect not in body:
                raise NotYet(f"{what} -> {code} but the body lacks {expect!r}: {flat[:120]}")
            return f"{what} -> {code} {flat[:60]}".strip()
        return probe

    def _where(self, conf: Mapping) -> str:
        return conf.get("url") or conf.get("container", "?")

    # services
    def postgres(self, conf: Mapping):
        name = conf.get("container")
        if name and not self.container_checks(name):
            return self._skip_rest("postgres", name)
        target = name if conf["access"] == "docker" else f"{conf['host']}:{conf['port']}"

        def superuser_sql(sql: str) -> tuple[bool, str]:
            if conf["access"] == "docker":
                argv = ["docker", "exec", "-u", conf["os_user"], name, "psql", "-X", "-At", "-v",
                        "ON_ERROR_STOP=1", "-U", conf["superuser"], "-d", conf["database"], "-c", sql]
                return self.sh(shlex.join(argv))
            source = conf.get("superuser_password")
            password = resolve_password(source) if source else None
            return self._psql_host(conf, conf["superuser"], password, conf["database"], sql)

        def accepts():
            if conf["access"] == "docker":
                ok, out = self.sh(shlex.join(["docker", "exec", name, "pg_isready", "-h", "127.0.0.1",
                                              "-p", str(conf["container_port"])]))
                if not ok:
                    raise NotYet(f"pg_isready: {out.strip()[-160:] or 'timed out'}")
            ok, out = superuser_sql("SELECT version()")
            if not ok:
                raise NotYet(f"SELECT version() as {conf['superuser']}: {out.strip()[-160:] or 'timed out'}")
            return f"accepts connections: {out.strip()[:50]}"

        if self.check(f"PostgreSQL {target} accepts connections", target, accepts).status != "pass":
            for role in conf["roles"]:
                self.skip(f"role {role.name} can log in", target, "skipped: PostgreSQL does not accept connections")
            self.skip("connections below max_connections", target, "skipped: PostgreSQL does not accept connections")
            return

        for role in conf["roles"]:
            self.check(f"role {role.name} can log in", target, self._role_probe(conf, role))
        if not conf["roles"]:
            self.skip("login roles authenticate", target, "no login roles configured (stack.services."
                      "postgres.roles or db_roles with a password)")

        def connections():
            ok, out = superuser_sql("SELECT count(*), current_setting('max_connections'), "
                                    "current_setting('superuser_reserved_connections') FROM pg_stat_activity "
                                    "WHERE backend_type = 'client backend'")
            if not ok:
                raise NotYet(f"reading pg_stat_activity: {out.strip()[-160:]}")
            used, limit, reserved = (int(v) for v in out.strip().splitlines()[-1].split("|"))
            room = limit - reserved - used
            text = f"{used} client connections of max_connections {limit} ({reserved} reserved)"
            if room < conf["connections_margin"]:
                raise Broken(f"{text}: only {room} left, margin is {conf['connections_margin']}")
            return text
        self.check(f"connections below max_connections by {conf['connections_margin']}", target,
                   connections)

    def _psql_host(self, conf, role: str, password: str | None, database: str, sql: str):
        argv = ["psql", "-w", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(conf["host"]),
                "-p", str(conf["port"]), "-U", role, "-d", database, "-c", sql]
        if password is None:
            return self.sh("PGCONNECT_TIMEOUT=5 " + shlex.join(argv))
        # The secret arrives on stdin; a private file holds it as a libpq password file.
        inner = ('umask 077; f=$(mktemp) || exit 1; IFS= read -r p; '
                 'printf "*:*:*:%s\\n" "$p" > "$f"; '
                 f'PGPASSFILE="$f" PGCONNECT_TIMEOUT=5 {shlex.join(argv)}; rc=$?; rm -f "$f"; exit $rc')
        return self.shell.run_with_secret(inner, _pgpass_user_and_password(role, password),
                                          self.s.command_timeout)

    def _role_probe(self, conf, role: Role):
        def probe():
            try:
                password = resolve_password(role.password, self.environ)
            except PgTargetError as exc:
                raise Broken(f"cannot read the password source: {exc}")
            self.shell.secrets.append(password)
            sql = "SELECT current_user"
            if conf["access"] == "docker":
                psql = shlex.join(["psql", "-w", "-X", "-At", "-h", "127.0.0.1", "-p",
                                   str(conf["container_port"]), "-U", role.name, "-d", role.database,
                                   "-c", sql])
                inner = ('umask 077; f=$(mktemp) || exit 1; cat > "$f"; '
                         f'PGPASSFILE="$f" PGCONNECT_TIMEOUT=5 {psql}; rc=$?; rm -f "$f"; exit $rc')
                command = shlex.join(["docker", "exec", "-i", "-u", conf["os_user"], conf["container"],
                                      "sh", "-c", inner])
                ok, out = self.shell.run_with_secret(command, pgpass_line(role.name, password).rstrip("\n"),
                                                     self.s.command_timeout)
                where = f"TCP 127.0.0.1:{conf['container_port']} in {conf['container']}"
            else:
                ok, out = self._psql_host(conf, role.name, password, role.database, sql)
                where = f"TCP {conf['host']}:{conf['port']}"
            text = " ".join(out.split())
            if ok:
                return f"logged in over {where} to {role.database} as {text[-40:]}"
            if "permission denied for database" in text:
                return f"password accepted over {where} (no CONNECT on {role.database})"
            if "password authentication failed" in text or "does not exist" in text:
                raise Broken(f"authentication failed over {where}: {text[-200:]}")
            raise NotYet(f"cannot log in over {where}: {text[-200:] or 'timed out'}")
        return probe

    def mlflow(self, conf: Mapping):
        name = conf.get("container")
        if name and not self.container_checks(name):
            return self._skip_rest("mlflow", name)
        where = self._where(conf)
        self.check("MLflow /health answers OK", where, self._http_probe(conf, "/health", "OK"))
        self.check("MLflow REST API searches experiments", where,
                   self._http_probe(conf, "/api/2.0/mlflow/experiments/search?max_results=1"))
        if conf.get("artifacts"):
            self.check("MLflow stores and serves an artifact", where, self._artifact_probe(conf),
                       RetryPolicy(2, self.s.retry.seconds, self.s.retry.wait))
        else:
            self.skip("MLflow stores and serves an artifact", where, "stack.services.mlflow.artifacts is off")
        workers = conf.get("workers")
        if not name or not workers:
            self.skip("MLflow worker count", where, "needs a container and an expected worker count")
        else:
            self.check(f"MLflow runs {workers} workers", name, self._workers_probe(name, workers))

    def _artifact_probe(self, conf):
        def api(method, path, payload=None, ctype="application/json", accept=(200,)):
            body = json.dumps(payload) if isinstance(payload, dict) else (payload or "")
            code, text, what = self.http(conf, method, path, body, ctype)
            if code not in accept:
                raise NotYet(f"{what} -> HTTP {code}: {' '.join(text.split())[:160]}")
            return text

        def probe():
            marker = f"quantlab-verify-{_secrets.token_hex(6)}"
            exp_id = None
            try:
                exp_id = json.loads(api("POST", "/api/2.0/mlflow/experiments/create",
                                        {"name": marker}))["experiment_id"]
                run = json.loads(api("POST", "/api/2.0/mlflow/runs/create",
                                     {"experiment_id": exp_id, "start_time": int(time.time() * 1000)}))
                info = run["run"]["info"]
                uri = info.get("artifact_uri", "")
                if not uri.startswith("mlflow-artifacts:/"):
                    raise Broken(f"run artifact URI {uri!r} is not proxied (mlflow-artifacts:/...): "
                                 "the server does not serve artifacts")
                path = "/api/2.0/mlflow-artifacts/artifacts/" + uri[len("mlflow-artifacts:/"):].strip("/") \
                       + "/verify.txt"
                api("PUT", path, marker, "text/plain")
                got = api("GET", path)
                if got.strip() != marker:
                    raise Broken(f"artifact read back differs: {got.strip()[:60]!r}")
                api("DELETE", path, accept=(200, 204, 404, 501))
                api("POST", "/api/2.0/mlflow/runs/delete", {"run_id": info["run_id"]})
                return (f"PUT+GET+DELETE of an artifact of run {info['run_id'][:8]} in scratch experiment "
                        f"{exp_id} through /api/2.0/mlflow-artifacts; experiment deleted")
            except (KeyError, ValueError) as exc:
                raise NotYet(f"unexpected MLflow answer: {type(exc).__name__} {exc}")
            finally:
                if exp_id is not None:
                    try:
                        api("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": exp_id})
                    except NotYet:
                        pass
        return probe

    def _workers_probe(self, name: str, expected: int):
        def probe():
            ok, out = self.sh(f"docker exec {shlex.quote(name)} sh -c {shlex.quote(PROCESS_LIST_COMMAND)}")
            if not ok:
                raise NotYet(f"cannot list processes: {out.strip()[-120:] or 'timed out'}")
            kind = "gunicorn" if count_workers(out, "gunicorn") else "uvicorn"
            count = count_workers(out, kind)
            if count != expected:
                raise NotYet(f"{count} {kind} workers, expected {expected}")
            return f"{count} {kind} workers"
        return probe

    def redis(self, conf: Mapping):
        name = conf["container"]
        if not self.container_checks(name):
            return self._skip_rest("redis", name)
        source = conf.get("password")

        def cli(*args: str) -> tuple[bool, str]:
            call = shlex.join(["redis-cli", "--raw", *args])
            if source:
                inner = f"IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; {call}"
                return self.shell.run_with_secret(
                    shlex.join(["docker", "exec", "-i", name, "sh", "-c", inner]),
                    resolve_password(source, self.environ), self.s.command_timeout)
            return self.sh(shlex.join(["docker", "exec", name, "redis-cli", "--raw", *args]))

        def ping():
            ok, out = cli("PING")
            if not ok or out.strip() != "PONG":
                raise NotYet(f"PING -> {' '.join(out.split())[-160:] or 'no answer (timed out)'}")
            return "PING -> PONG"

        def write_read():
            key, value = f"quantlab:verify:{_secrets.token_hex(6)}", _secrets.token_hex(8)
            ok, out = cli("SET", key, value, "EX", "60")
            if not ok or out.strip() != "OK":
                raise NotYet(f"SET {key} -> {' '.join(out.split())[-160:] or 'no answer'}")
            ok, out = cli("GET", key)
            cli("DEL", key)
            if not ok or out.strip() != value:
                raise NotYet(f"GET {key} returned {' '.join(out.split())[-80:]!r}, not what was written")
            return f"SET (EX 60) + GET {key} round trip, key deleted"
        self.check(f"Redis {name} answers PING", name, ping)
        self.check(f"Redis {name} writes and reads a scratch key", name, write_read)

    def s3(self, conf: Mapping):
        name = conf.get("container")
        if name and not self.container_checks(name):
            return self._skip_rest("s3", name)
        where = self._where(conf)
        self.check(f"S3 health path {conf['health_path']} answers", where,
                   self._http_probe(conf, conf["health_path"]))
        bucket = conf.get("bucket")
        if not bucket:
            self.skip("S3 artifact bucket exists", where, "no bucket configured")
            return

        def exists():
            code, _, what = self.http(conf, "HEAD", f"/{bucket}")
            if code == 200:
                return f"{what} -> 200"
            if code == 403:
                return f"{what} -> 403 (exists; anonymous access denied)"
            if code == 404:
                raise Broken(f"bucket {bucket} does not exist ({what} -> 404)")
            raise NotYet(f"{what} -> HTTP {code}")
        self.check(f"S3 bucket {bucket} exists", where, exists)

    def backend(self, conf: Mapping):
        name = conf.get("container")
        if name and not self.container_checks(name):
            return self._skip_rest("backend", name)
        where = self._where(conf)
        self.check(f"backend {conf['health_path']} answers", where, self._http_probe(conf, conf["health_path"]))
        self.check(f"backend database round trip {conf['db_path']}", where,
                   self._http_probe(conf, conf["db_path"]))

    def _skip_rest(self, service: str, name: str):
        state = "absent" if name not in self.first_restarts else "not running"
        self.skip(f"{service} service checks", name, f"skipped: container {name} is {state}")

    # all
    def run(self) -> list[CheckResult]:
        for service in SERVICES:
            conf = self.s.services.get(service)
            if conf is None:
                self.skip(f"{service} checks", "-", f"not configured on this host "
                          f"(stack.services has no {service!r})")
                continue
            getattr(self, service)(conf)
        # the end of the window: logs since the given time, restart counts since the start
        for name in [n for n in self.first_restarts]:
            self.check(f"container {name} logs show no known failure", name, self._logs(name),
                       RetryPolicy(2, 10, 1))
        for name in [n for n in self.first_restarts]:
            self.check(f"container {name} restart count is stable", name, self._restarts_stable(name),
                       RetryPolicy(2, self.s.restart_window + 10, 1))
        return self.results


def _pgpass_user_and_password(role: str, password: str) -> str:
    """`user:password` escaped for a libpq password file line (the host-psql path builds
    ``*:*:*:`` + this)."""
    return pgpass_line(role, password).rstrip("\n")[len("*:*:*:"):]


def run_stack_checks(shell: Shell, settings: StackSettings,
                     environ: Mapping[str, str] | None = None) -> list[CheckResult]:
    return StackChecker(shell, settings, environ).run()


# --- the pyinfra operation ---------------------------------------------------------------------

def _report_failure(state, host, failed: list[str]) -> bool:
    # FunctionCommand passes state and host only to a callable whose parameters bear these names.
    host.log_styled(f"stack verification failed: {len(failed)} check(s):\n  " + "\n  ".join(failed),
                    fg="red", log_func=logger.error)
    return False


@operation()
def verify(settings: StackSettings | None = None):
    """
    Check the whole stack on this host; read-only, never counted as a change.

    + settings: ``StackSettings`` (default: from the host's ``stack`` data)

    Checks run when pyinfra executes the operation, not while it plans (``--dry`` runs none).
    All pass: "No changes". Any fails: the operation fails on this host with the evidence.

    **Example:**

    .. code:: python

        from tasks.checks import stack as stack_checks
        stack_checks.verify(name="Verify the stack")
    """
    if settings is None:
        try:
            settings = stack_settings(host.name, host.data)
        except StackSettingsError as exc:
            raise OperationError(str(exc)) from None
    if not host.state.is_executing:
        host.noop("stack checks run when the deploy executes (read-only; none with --dry)")
        return
    started, clock = time.time(), time.monotonic()
    results = run_stack_checks(pyinfra_shell(host), settings)
    elapsed = time.monotonic() - clock
    for line in format_report(results).splitlines():
        host.log(f"verify: {line}")
    if settings.report_path:
        write_report(settings.report_path, report_dict(host.name, results, started, elapsed,
                                                       settings.deadline))
        logger.info(f"{host.print_prefix}verify: JSON report in {settings.report_path}")
    failed = [f"{r.name} ({r.target}): {r.evidence}" for r in results if r.status == "fail"]
    if failed:
        yield FunctionCommand(_report_failure, (failed,), {})


