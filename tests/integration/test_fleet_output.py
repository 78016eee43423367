"""What an operator sees on a fleet (issue 19), with the real pyinfra CLI:

- five inventory hosts over real SSH (tests/sshd.py: one sshd on this machine, five names for it,
  each checking the shared lab with its own settings), one of them failing: every line printed
  about a host carries its name, the recap at the end names the failing host and its reason, and
  the run's JSON document (``QUANT_REPORT``) has all five hosts with their checks;
- ``--dry --diff`` on a drifted Dockerfile and compose file (deploys/fix_backend_reload.py), a
  daemon.json (onboarding's operation on a private copy) and the schedule's job script
  (deploys/schedule_cleanup.py in a private folder) shows each diff, the run puts each back
  (modes kept), and a second ``--dry --diff`` shows none;
- a check on a service that answers only after 30 s prints progress lines while it waits.

Each deploy runs twice; the second run reports no changes.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from tasks.core.recap import plain
from tasks.lab.inventory import lab_host_data
from tests.labkit import GROUP_DATA, REPO, SERVICES, PyinfraRun, pyinfra_process, run_pyinfra, shared_lab
from tests.sshd import sshd  # noqa: F401  (the fixture)

pytestmark = pytest.mark.lab

VERIFY = REPO / "deploys" / "verify_stack.py"
BACKEND = REPO / "deploys" / "fix_backend_reload.py"
SCHEDULE = REPO / "deploys" / "schedule_cleanup.py"
FLEET = [f"fleet-{i}" for i in range(1, 6)]
FAILING = "fleet-3"


@pytest.fixture(scope="module")
def lab(request):
    # fix_backend_reload finds the healthy lab's backend as it leaves it; if not, it recreates it.
    return shared_lab(request, "healthy", changes={SERVICES})


def stderr_lines(run) -> list[str]:
    return [plain(line).rstrip() for line in run.stderr.splitlines()]


def unnamed_host_lines(run, names: list[str]) -> list[str]:
    """Lines between "Preparing operation files" and the end that neither name a host nor are
    pyinfra's own section lines: what a fleet's operator could not attribute."""
    lines = stderr_lines(run)
    start = next(i for i, line in enumerate(lines) if "--> Preparing operation files" in line)
    allowed = re.compile(r"^\s*(-->|Loading: |\d+ host\(s\): |$)")
    named = re.compile(r"^\s*\[(" + "|".join(re.escape(n) for n in names) + r")\]")
    return [line for line in lines[start:] if not allowed.match(line) and not named.match(line)]


def recap(run) -> dict[str, str]:
    lines = stderr_lines(run)
    start = max(i for i, line in enumerate(lines) if line.strip().startswith("--> Recap"))
    rows = {}
    for line in lines[start + 1:]:
        match = re.match(r"^\s*\[([^\]]+)\]\s+(.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


# -- a fleet of five, one failing ------------------------------------------------------------------


def fleet_inventory(path: Path, lab, server) -> Path:
    hosts = []
    for name in FLEET:
        data = lab_host_data(lab.prefix)
        if name == FAILING:
            data["stack"]["services"]["redis"]["container"] = f"{lab.prefix}-redis-gone"
        hosts.append((name, {"ssh_hostname": server.host, **server.pyinfra_host_data(), **data}))
    path.write_text(f"hosts = {hosts!r}\n")
    return path


def test_a_fleet_of_five_with_one_failing(lab, sshd, tmp_path):  # noqa: F811  (the fixture)
    inventory = fleet_inventory(tmp_path / "fleet.py", lab, sshd)
    for attempt in ("first", "second"):
        report = tmp_path / f"run-{attempt}.json"
        run = run_pyinfra(inventory, VERIFY, env={"QUANT_REPORT": str(report)}, timeout=900)
        assert run.returncode != 0, run.report()  # the failing host fails the run
        assert unnamed_host_lines(run, FLEET) == [], run.report()
        # each host's verification table, every row prefixed
        for name in FLEET:
            rows = [line for line in stderr_lines(run) if re.match(rf"^\s*\[{name}\]\s+verify: ", line)]
            assert any("CHECK" in row and "EVIDENCE" in row for row in rows), run.report()
            assert any(row.split("verify: ", 1)[1].startswith("totals:") for row in rows), run.report()
        # the recap: one line each, the failing host named with its reason
        rows = recap(run)
        assert sorted(rows) == FLEET, run.report()
        for name in FLEET:
            if name == FAILING:
                assert re.match(r"failed\s+ok=0\s+changed=0\s+failed=1\s+unreachable=0\s+reason: ", rows[name])
                assert "Verify the stack" in rows[name] and f"{lab.prefix}-redis-gone" in rows[name], rows[name]
                assert "does not exist" in rows[name], rows[name]
            else:
                assert re.match(r"ok\s+ok=1\s+changed=0\s+failed=0\s+unreachable=0$", rows[name]), rows[name]
        assert "5 host(s): 4 ok, 0 changed, 1 failed, 0 unreachable" in run.stderr, run.report()
        assert f"--> Run report: {report}" in run.stderr
        # the run's document: all five hosts, their operations, timings and check results
        assert stat.S_IMODE(report.stat().st_mode) == 0o600
        doc = json.loads(report.read_text())
        assert doc["mode"] == "execute" and doc["deploys"] == [str(inventory), str(VERIFY)]
        assert doc["totals"] == {"hosts": 5, "ok": 4, "changed": 0, "failed": 1, "unreachable": 0}
        assert sorted(doc["hosts"]) == FLEET
        for name, host in doc["hosts"].items():
            assert [op["name"] for op in host["operations"]] == ["Verify the stack"]
            # timings are recorded (numbers), never compared with a duration: these machines are noisy
            assert isinstance(host["operations"][0]["elapsed"], float) and isinstance(host["elapsed"], float)
            checks = {c["name"]: c for c in host["checks"]}
            assert checks, host
            if name == FAILING:
                assert host["status"] == "failed" and f"{lab.prefix}-redis-gone" in host["reason"]
                assert checks[f"container {lab.prefix}-redis-gone is present"]["status"] == "fail"
            else:
                assert host["status"] == "ok" and host["reason"] is None
                assert all(c["status"] in ("pass", "warn", "skip") for c in checks.values()), checks
        # read-only: the second run, like the first, changes nothing
        assert run.results is not None and run.changed_ops() == [], run.report()


# -- --dry --diff on every drifted file, then none ------------------------------------------------------


def diff_blocks(run) -> dict[str, list[str]]:
    """pyinfra's --diff output: "Will modify/create <path>" and the diff lines after it."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in stderr_lines(run):
        match = re.search(r"Will (?:modify|create) (\S+)$", line)
        if match:
            current = blocks.setdefault(match.group(1), [])
        elif current is not None and re.match(r"^\s{4,}[-+@ ]", line):
            current.append(line.strip())
        elif current is not None and line.strip() == "":
            current = None
    return blocks


def dry_diff(inventory: Path, deploy: Path) -> PyinfraRun:
    """`pyinfra --dry --diff` as an operator types it (no -y: with -y pyinfra skips change
    detection, and --diff prints nothing)."""
    proc = pyinfra_process("--dry", "--diff", "--group-data", str(GROUP_DATA), str(inventory), str(deploy),
                           timeout=600)
    return PyinfraRun(proc.returncode, None, proc.stdout, proc.stderr)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


COMPOSE = """\
# the backend as an operator runs it
services:
  backend:
    image: quantlab/backend
    ports:
      - "127.0.0.1:8000:8000"
    environment:
      LOG_LEVEL: info
"""

DAEMON_JSON = '{\n  "log-driver": "json-file",\n  "log-opts": {"max-size": "50m", "max-file": "2"},\n' \
              '  "registry-mirrors": ["https://mirror.example"]\n}\n'

DAEMON_DEPLOY = """\
from tasks.operations import onboard, recap
from tasks.operations.refusals import quiet_refusals

quiet_refusals()
recap.install()
onboard.docker_daemon_json(name="Docker daemon.json (a private copy)", max_size="10m", max_file=3, path={path!r})
"""


def test_dry_diff_shows_each_drifted_file_and_a_second_run_none(lab, tmp_path, request):
    folder = tmp_path / "files"
    folder.mkdir()
    dockerfile, compose, daemon = folder / "Dockerfile", folder / "docker-compose.yml", folder / "daemon.json"
    dockerfile.write_text((REPO / "tasks" / "lab" / "recipes" / "backend" / "Dockerfile").read_text())
    dockerfile.chmod(0o600)
    compose.write_text(COMPOSE)
    compose.chmod(0o640)
    daemon.write_text(DAEMON_JSON)
    # deploys/fix_backend_reload.py on the lab's backend, with these two files
    data = lab_host_data(lab.prefix)
    data["backend"].update({"dockerfile": str(dockerfile), "compose_file": str(compose)})
    backend_inventory = tmp_path / "backend.py"
    backend_inventory.write_text(f"hosts = [('@local', {data!r})]\n")
    # onboarding's daemon.json operation, on a private copy (never this machine's own)
    daemon_deploy = tmp_path / "daemon_deploy.py"
    daemon_deploy.write_text(DAEMON_DEPLOY.format(path=str(daemon)))
    local_inventory = tmp_path / "local.py"
    local_inventory.write_text("hosts = ['@local']\n")
    # the schedule, installed in a private folder first, its job script then edited by hand
    name = f"quant-diff-{lab.prefix}"
    script = folder / "bin" / f"{name}.sh"
    schedule = {"name": name, "minute": 41, "hour": 4, "scheduler": "cron", "script_path": str(script),
                "log_file": str(folder / "log" / "cleanup.log"), "lock_file": str(folder / "cleanup.lock")}
    schedule_inventory = tmp_path / "schedule.py"

    def schedule_hosts(**over) -> Path:
        schedule_inventory.write_text(f"hosts = [('@local', {{'cleanup_schedule': {({**schedule, **over})!r}}})]\n")
        return schedule_inventory

    request.addfinalizer(lambda: run_pyinfra(schedule_hosts(present=False), SCHEDULE))
    installed = run_pyinfra(schedule_hosts(), SCHEDULE)
    assert installed.returncode == 0, installed.report()
    script.write_text(script.read_text().replace("flock -n", "flock -n -E 75", 1) + "# edited by hand\n")

    runs = [(backend_inventory, BACKEND), (local_inventory, daemon_deploy), (schedule_hosts(), SCHEDULE)]
    # each file's diff: a line it adds (+) or takes away (-)
    drifted = {str(dockerfile): "+--reload-delay", str(compose): "+WATCHFILES_FORCE_POLLING",
               str(daemon): '+"max-size": "10m"', str(script): "-# edited by hand"}
    before = {path: sha(Path(path)) for path in drifted}

    seen: dict[str, list[str]] = {}
    for inventory, deploy in runs:
        dry = dry_diff(inventory, deploy)
        assert dry.returncode == 0, dry.report()
        seen.update(diff_blocks(dry))
    assert {path: sha(Path(path)) for path in drifted} == before, "--dry changed a file"
    for path, change in drifted.items():
        assert path in seen, (path, seen)
        sign, text = change[0], change[1:]
        assert any(line.startswith(sign) and text in line for line in seen[path]), (path, seen[path])

    for inventory, deploy in runs:
        applied = run_pyinfra(inventory, deploy)
        assert applied.returncode == 0, applied.report()
    assert "--reload-delay" in dockerfile.read_text() and "WATCHFILES_FORCE_POLLING" in compose.read_text()
    assert json.loads(daemon.read_text())["registry-mirrors"] == ["https://mirror.example"]
    assert "# edited by hand" not in script.read_text()
    # each file keeps its mode (a 0600 Dockerfile stays 0600); the job script is its user's, 0700
    assert stat.S_IMODE(dockerfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(compose.stat().st_mode) == 0o640
    assert stat.S_IMODE(script.stat().st_mode) == 0o700

    for inventory, deploy in runs:
        again = dry_diff(inventory, deploy)
        assert again.returncode == 0, again.report()
        assert diff_blocks(again) == {}, again.report()
        second = run_pyinfra(inventory, deploy)
        assert second.returncode == 0 and second.changed_ops() == [], second.report()


# -- a slow check says it is waiting -------------------------------------------------------------------


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (http.server's name)
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_slow_check_prints_progress_while_it_waits(tmp_path, request):
    port, delay = _free_port(), 30
    started = time.monotonic()

    def serve_late():
        time.sleep(delay)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Ok)
        request.addfinalizer(server.shutdown)
        server.serve_forever()

    threading.Thread(target=serve_late, daemon=True).start()
    stack = {"services": {"backend": {"url": f"http://127.0.0.1:{port}"}},
             "retry_attempts": 100, "retry_seconds": 90, "retry_wait": 2, "deadline": 150}
    inventory = tmp_path / "slow.py"
    inventory.write_text(f"hosts = [('@local', {{'stack': {stack!r}}})]\n")
    run = run_pyinfra(inventory, VERIFY, timeout=300)
    assert run.returncode == 0, run.report()
    assert time.monotonic() - started >= delay
    waits = [re.match(r"^\s*\[@local\]\s+waiting for check 'backend /health answers' \(attempt (\d+)\): "
                      r"(\d+)s / 90s$", line) for line in stderr_lines(run)]
    waits = [(int(m.group(1)), int(m.group(2))) for m in waits if m]
    assert len(waits) >= 2, run.report()
    assert [s for _, s in waits] == sorted(s for _, s in waits) and waits[-1][1] >= 20, waits
    assert waits[-1][0] > waits[0][0], waits  # attempts went on between two lines
    assert unnamed_host_lines(run, ["@local"]) == [], run.report()
    assert recap(run) and recap(run)["@local"].startswith("ok "), run.report()
    # the service answers now: the second run waits for nothing and changes nothing
    again = run_pyinfra(inventory, VERIFY, timeout=300)
    assert again.returncode == 0 and again.changed_ops() == [], again.report()
    assert "waiting for check" not in again.stderr
