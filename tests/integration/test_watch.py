"""scripts/watch against the real incident lab over @local: the MLflow SIGKILL signature in the
container's own log stream (a burst of a thousand lines) -> fix_mlflow runs exactly once, is
verified, and the audit has the finding and the action; --dry runs nothing; SIGTERM leaves no
stream or child behind. quant_user's auth failure -> db_users for that role only (another
configured role stays absent), and the backend's watchfiles error -> the reload fix, each once and
verified; a remediation made to fail (QUANT_FAULT) is retried up to the limit, then its breaker
opens and says so.

Each incident's trigger-to-verified time is printed (``-rP`` shows it)."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest
import yaml

from tests.labkit import GROUP_DATA, REPO, lab_up, write_inventory
from tests.sshd import SSHD, SSHD_MISSING, restart_sshd, start_sshd, stop_sshd

pytestmark = pytest.mark.lab

WATCH = REPO / "scripts" / "watch"
BURST = ('stamp=$(date -u "+%Y-%m-%d %H:%M:%S"); for i in $(seq 1000 1999); do echo "[$stamp +0000] [1] '
         '[ERROR] Worker (pid:$i) was sent SIGKILL! Perhaps out of memory?"; done > /proc/1/fd/1')


@pytest.fixture(scope="module")
def lab(request):
    return lab_up(request, "qtwt", 22000, "incident")


WATCHFILES_LINE = ("_rust_notify.WatchfilesRustInternalError: error in underlying watcher: "
                   "Input/output error (os error 5)")
OTHER_ROLE = "qtwt_reporting"  # configured, absent: a db_users run for every role would create it


class Watch:
    def __init__(self, tmp_path: Path, inventory: Path, *args: str, hosts: int = 1, env: dict | None = None):
        self.audit = tmp_path / "audit.jsonl"
        self.console = tmp_path / "console.log"
        self.out = self.console.open("w")
        self.proc = subprocess.Popen(
            [str(WATCH), str(inventory), "--audit", str(self.audit), "--group-data", str(GROUP_DATA), *args],
            stdout=self.out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            env={**os.environ, **(env or {})})
        self.wait_for(lambda: f"watching {hosts} host(s)" in self.text(), 60, "the watcher to start")
        time.sleep(3)  # the streams open `docker logs --since now`

    def text(self) -> str:
        return self.console.read_text()

    def records(self) -> list[dict]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]

    def actions(self, remediation: str) -> list[dict]:
        return [r for r in self.records() if r.get("kind") == "action" and r.get("remediation") == remediation]

    def wait_for(self, condition, seconds: float, what: str):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.proc.poll() is None, f"watcher exited {self.proc.returncode}:\n{self.text()[-4000:]}"
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-4000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.out.close()


def leftovers(*markers: object) -> list[str]:
    """Processes whose command line names the lab or the test's folder (streams, pyinfra children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(str(m) in cmdline for m in markers) and (
                "docker logs" in cmdline or "docker events" in cmdline or "pyinfra" in cmdline
                or "scripts/watch" in cmdline or "tasks.watch" in cmdline):
            found.append(f"{entry.name}: {cmdline}")
    return found


def running_mlflow(lab):
    """The incident's MLflow container, running: it may have used up its restarts (exited for
    good); it is started again, as an operator would, before the watcher starts."""
    container = lab.container("mlflow")
    if container.status != "running":
        container.start()
        time.sleep(2)
        container.reload()
    return container


def burst(lab, container) -> None:
    """A thousand SIGKILL lines on that container's own stdout, in one write: into the incident's
    container only (by id), never into the one a fix may have made meanwhile."""
    assert lab.container("mlflow").id == container.id, "fixed before the burst: the test raced"
    result = container.exec_run(["sh", "-c", BURST])
    assert result.exit_code == 0, result.output


def test_dry_run_reports_one_remediation_for_a_burst_and_changes_nothing(lab, tmp_path):
    incident = running_mlflow(lab)
    watch = Watch(tmp_path, write_inventory(tmp_path / "inventory.py", lab.prefix), "--dry")
    try:
        burst(lab, incident)
        watch.wait_for(lambda: watch.actions("fix_mlflow"), 60, "the dry-run decision")
        time.sleep(3)
        (action,) = watch.actions("fix_mlflow")
        assert action["result"] == "dry-run" and action["target"] == f"{lab.prefix}-mlflow"
    finally:
        assert watch.stop() == 0
    assert "watcher stopped" in watch.text()
    assert lab.container("mlflow").id == incident.id
    assert leftovers(lab.prefix, tmp_path) == []


def pause(container, attempts: int = 5) -> None:
    """`docker pause`, tried again when the freezer gives up ("unable to freeze": seen with the
    load near 20, the incident's workers being OOM-killed as it froze them)."""
    for attempt in range(1, attempts + 1):
        try:
            container.pause()
            return
        except docker.errors.APIError as error:
            if "unable to freeze" not in str(error) or attempt == attempts:
                raise
            time.sleep(1)


def test_sigkill_burst_is_fixed_once_verified_and_audited(lab, tmp_path):
    inventory = write_inventory(tmp_path / "inventory.py", lab.prefix)
    incident = running_mlflow(lab)
    # Paused while the watcher starts: the incident's own OOM kills come every few seconds, and
    # one seen first would start the fix (renaming the container) before the burst went in.
    pause(incident)
    try:
        watch = Watch(tmp_path, inventory, "--grace", "20")
    finally:
        incident.unpause()
    try:
        burst_at = time.time()
        burst(lab, incident)
        watch.wait_for(lambda: watch.actions("fix_mlflow"), 600, "fix_mlflow to end")
        (action,) = watch.actions("fix_mlflow")
        assert action["result"] == "verified", action
        print(f"trigger to verified: fix_mlflow {ended(action) - burst_at:.1f}s from the burst "
              f"(run {action['duration']:.1f}s; trigger {action['signature']})")
        assert action["host"] == "@local" and action["target"] == f"{lab.prefix}-mlflow"
        assert action["signature"] in ("mlflow-worker-sigkill", "mlflow-oom-killed", "mlflow-restart-loop")
        assert action["duration"] is not None and action["attempt"] == 1
        assert action["collapsed"] >= 999  # the burst: one remediation
        run_log = Path(action["detail"].rsplit("(output: ", 1)[1].rstrip(")"))
        assert run_log.parent == tmp_path / "audit.jsonl.runs" and run_log.stat().st_mode & 0o777 == 0o600
        text = run_log.read_text()
        assert text.startswith(f"QUANT_REMEDIATE_ONLY=fix_mlflow:{lab.prefix}-mlflow ")
        assert "deploys/remediate.py --limit @local" in text and "Recap" in text
        (finding,) = [r for r in watch.records() if r.get("kind") == "finding"
                      and r.get("remediation") == "fix_mlflow" and r["result"] == "started"]
        assert finding["signature"] == action["signature"] and finding["evidence"] == action["evidence"]
        if finding["signature"] == "mlflow-worker-sigkill":
            assert "was sent SIGKILL! Perhaps out of memory?" in finding["evidence"]
        for key in ("time", "host", "signature", "evidence", "action", "result", "duration"):
            assert key in finding and key in action
        assert "remediate fix_mlflow on @local for" in watch.text() and "-> verified in" in watch.text()

        container = lab.container("mlflow")
        assert container.status == "running"
        assert container.attrs["HostConfig"]["Memory"] == 1 << 30

        # the fixed container's own start and a second burst inside the throttle window: no new run
        time.sleep(25)  # past the grace window

        def throttled():
            burst(lab, container)  # into the fixed container, inside the throttle window
            time.sleep(5)
            return any(r["result"] == "throttled" for r in watch.records())

        watch.wait_for(throttled, 120, "the second burst to be throttled")
        time.sleep(3)
        assert len(watch.actions("fix_mlflow")) == 1
        assert lab.container("mlflow").id == container.id
    finally:
        code = watch.stop()
    assert code == 0, watch.text()[-3000:]
    assert "watcher stopped" in watch.text()
    assert leftovers(lab.prefix, tmp_path) == []


# -- quant_user's auth failure and the backend's watchfiles error; the breaker ----------------------


def incident_inventory(path: Path, lab) -> Path:
    """The lab's host data with one more configured role that does not exist in PostgreSQL."""
    path.write_text(
        "from tasks.lab.inventory import lab_host_data\n"
        f"data = lab_host_data({lab.prefix!r}, mlflow_image='mlflow2')\n"
        f"data['db_roles'] = data['db_roles'] + [{{'name': {OTHER_ROLE!r}, 'login': False}}]\n"
        "hosts = [('@local', data)]\n")
    return path


def watchfiles_backend(lab) -> float:
    """The backend replaced by one whose start really prints watchfiles' error unless polling is
    forced (the lab's image and settings, as tests/integration/test_remediate.py's fixture, from
    the current container's env without the fix's WATCHFILES_FORCE_POLLING). Returns when the
    line was printed (this machine's clock)."""
    client = docker.from_env()
    old = lab.container("backend")
    env = [e for e in old.attrs["Config"]["Env"] if not e.startswith("WATCHFILES_FORCE_POLLING=")]
    image, port = old.attrs["Config"]["Image"], lab.state["ports"]["backend"]
    old.remove(force=True)
    script = ('if [ "$WATCHFILES_FORCE_POLLING" != true ]; then '
              'echo "Traceback (most recent call last):" >&2; '
              f'echo "{WATCHFILES_LINE}" >&2; fi; exec "$@"')
    container = client.containers.run(
        image, ["sh", "-c", script, "fixture", "uvicorn", "main:app", "--host", "0.0.0.0",
                "--port", "8000", "--reload"],
        name=f"{lab.prefix}-backend", detach=True, environment=env, network=lab.state["network"],
        ports={"8000/tcp": ("127.0.0.1", port)}, restart_policy={"Name": "unless-stopped"},
        labels={"quantlab.prefix": lab.prefix, "quantlab.service": "backend",
                "quantlab.fixture": "watchfiles-io-error"})
    for _ in range(60):
        if WATCHFILES_LINE.encode() in container.logs():
            return time.time()
        time.sleep(0.2)
    raise AssertionError(f"the fixture backend printed no watchfiles error:\n{container.logs()[-2000:]!r}")


def backend_db(lab) -> int:
    """GET the backend's /health/db (each request logs in as quant_user): its HTTP status."""
    url = f"http://127.0.0.1:{lab.state['ports']['backend']}/health/db"
    for _ in range(60):
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):  # the backend (re)starting
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer")


def roles(lab) -> set[str]:
    out = lab.psql(f"SELECT rolname FROM pg_roles WHERE rolname IN ('quant_user', '{OTHER_ROLE}');")
    return {name for name in ("quant_user", OTHER_ROLE) if name in out.split()}


def ended(record: dict) -> float:
    return dt.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def test_auth_failure_and_watchfiles_error_are_each_fixed_once_verified_and_audited(lab, tmp_path):
    assert "quant_user" not in roles(lab)  # the incident's missing role
    watch = Watch(tmp_path, incident_inventory(tmp_path / "inventory.py", lab), "--grace", "15")
    try:
        auth_at = time.time()
        assert backend_db(lab) == 503  # PostgreSQL and the backend log quant_user's failed login
        watchfiles_at = watchfiles_backend(lab)
        watch.wait_for(lambda: watch.actions("db_users") and watch.actions("backend_reload"), 420,
                       "db_users and the backend fix to end")
        (db,) = watch.actions("db_users")
        (backend,) = watch.actions("backend_reload")
        assert db["result"] == "verified" and db["target"] == "quant_user", db
        assert db["signature"] == "postgres-password-auth-failed" and 'for user "quant_user"' in db["evidence"]
        assert backend["result"] == "verified" and backend["target"] == f"{lab.prefix}-backend", backend
        assert backend["signature"] == "backend-watchfiles-io-error" and "os error 5" in backend["evidence"]
        for action in (db, backend):
            assert action["duration"] is not None and action["attempt"] == 1 and action["host"] == "@local"
            run_log = Path(action["detail"].rsplit("(output: ", 1)[1].rstrip(")")).read_text()
            assert run_log.startswith(f"QUANT_REMEDIATE_ONLY={action['remediation']}:{action['target']} ")
        print(f"trigger to verified: db_users {ended(db) - auth_at:.1f}s (run {db['duration']:.1f}s), "
              f"backend_reload {ended(backend) - watchfiles_at:.1f}s (run {backend['duration']:.1f}s)")
        started = [r for r in watch.records() if r.get("kind") == "finding" and r["result"] in ("started", "queued")]
        assert sorted(r["remediation"] for r in started) == ["backend_reload", "db_users"]
        assert "remediate db_users on @local for quant_user" in watch.text()
        assert "remediate backend_reload on @local for" in watch.text()

        # the real state: only the role the line named; the backend polls and logs in again
        assert roles(lab) == {"quant_user"}, "db_users touched a role no line named"
        container = lab.container("backend")
        assert "WATCHFILES_FORCE_POLLING=true" in container.attrs["Config"]["Env"]
        assert WATCHFILES_LINE.encode() not in container.logs()
        assert backend_db(lab) == 200

        # their own restarts, logins and log lines past the grace window: no second run
        time.sleep(20)
        assert len(watch.actions("db_users")) == 1 and len(watch.actions("backend_reload")) == 1
        assert len([r for r in watch.records() if r.get("kind") == "action"]) == 2
    finally:
        code = watch.stop()
    assert code == 0, watch.text()[-3000:]
    assert leftovers(lab.prefix, tmp_path) == []


def test_a_failing_remediation_is_retried_to_the_limit_then_its_breaker_opens(lab, tmp_path):
    # every backend recreate raises once the new container started (and is rolled back)
    watch = Watch(tmp_path, write_inventory(tmp_path / "inventory.py", lab.prefix),
                  "--retry-delay", "1", "--grace", "5", "--breaker", "3",
                  env={"QUANT_FAULT": "recreate.after-start:raise"})
    try:
        watchfiles_backend(lab)
        watch.wait_for(lambda: any(r.get("kind") == "breaker" for r in watch.records()), 420,
                       "the breaker to open")
        actions = watch.actions("backend_reload")
        assert [(a["attempt"], a["result"]) for a in actions] == [(1, "failed"), (2, "failed"), (3, "failed")]
        for action in actions:
            run_log = Path(action["detail"].rsplit("(output: ", 1)[1].rstrip(")")).read_text()
            assert "quant fault: raising at recreate.after-start" in run_log
        retries = [r["action"] for r in watch.records() if r.get("kind") == "finding" and r["result"] == "queued"]
        assert retries == ["retry 2 of 3", "retry 3 of 3"]
        (breaker,) = [r for r in watch.records() if r.get("kind") == "breaker"]
        assert breaker["result"] == "open" and breaker["target"] == f"{lab.prefix}-backend"
        assert "breaker open after 3 failed run(s): not tried again" in breaker["action"]
        assert "breaker open after 3 failed run(s)" in watch.text()  # the console's line

        # the rollbacks' restarts print the error again: never a fourth run
        watchfiles_backend(lab)
        time.sleep(10)
        assert len(watch.actions("backend_reload")) == 3
        container = lab.container("backend")  # rolled back each time: still the broken one
        assert "WATCHFILES_FORCE_POLLING=true" not in container.attrs["Config"]["Env"]
    finally:
        code = watch.stop()
    assert code == 0, watch.text()[-3000:]
    assert leftovers(lab.prefix, tmp_path) == []


# -- several SSH hosts, one of them cut off ------------------------------------------------------


def session_pids(listener: int) -> list[int]:
    """sshd's per-connection processes (each in a session of its own, so not in its group)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == listener:
                pids.append(int(entry.name))
    return pids


def cut(server) -> None:
    """The host's sshd stopped, with the sessions it had (as when the host goes away)."""
    sessions = session_pids(server.process.pid)
    stop_sshd(server.process)
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture
def servers(tmp_path_factory):
    if not SSHD.exists():
        pytest.skip(SSHD_MISSING)
    started = []
    try:
        for name in ("a", "b", "c"):
            started.append(start_sshd(tmp_path_factory.mktemp(f"sshd-{name}")))
        yield started
    finally:
        for server in started:
            cut(server)


def ssh_inventory(path: Path, lab, servers, tmp_path: Path) -> Path:
    """Three hosts over their own sshd (all this machine, each its own part of the lab): ssh-a
    heals the backend's watchfiles error, ssh-b quant_user's login, ssh-c follows MLflow. Each
    with a catalog of its one signature and a last-run record of its own."""
    packaged = yaml.safe_load((REPO / "tasks" / "core" / "signatures.yml").read_text())["signatures"]
    hosts = []
    for server, name, signature in zip(servers, ("ssh-a", "ssh-b", "ssh-c"),
                                       ("backend-watchfiles-io-error", "postgres-password-auth-failed",
                                        "mlflow-worker-sigkill"), strict=True):
        catalog = tmp_path / f"{name}-catalog.yml"
        catalog.write_text(yaml.safe_dump({"signatures": [s for s in packaged if s["id"] == signature]}))
        data = {**server.pyinfra_host_data(), "ssh_hostname": server.host,
                "remediate": {"catalog": str(catalog), "record_path": str(tmp_path / f"{name}-runs.json"),
                              "report_dir": str(tmp_path / "reports")}}
        hosts.append((name, data))
    path.write_text(
        "from tasks.lab.inventory import lab_host_data\n"
        f"hosts = [(name, {{**lab_host_data({lab.prefix!r}, mlflow_image='mlflow2'), **data}})\n"
        f"         for name, data in {hosts!r}]\n")
    return path


def test_one_hosts_sshd_stopped_the_others_still_healed_it_reconnects_with_backoff(lab, servers, tmp_path):
    a, b, c = servers
    watch = Watch(tmp_path, ssh_inventory(tmp_path / "inventory.py", lab, servers, tmp_path), "--grace", "15",
                  hosts=3)
    try:
        cut(c)
        cut_at = time.time()
        watch.wait_for(lambda: any(r.get("host") == "ssh-c" and r["result"] == "disconnected"
                                   for r in watch.records()), 60, "ssh-c reported disconnected")
        # the incidents, on the hosts still reachable
        lab.psql("DROP OWNED BY quant_user; DROP ROLE quant_user;")
        auth_at = time.time()
        assert backend_db(lab) == 503
        watchfiles_at = watchfiles_backend(lab)
        watch.wait_for(lambda: watch.actions("db_users") and watch.actions("backend_reload"), 420,
                       "ssh-a and ssh-b to heal")
        (db,) = watch.actions("db_users")
        (backend,) = watch.actions("backend_reload")
        assert (db["host"], db["result"], db["target"]) == ("ssh-b", "verified", "quant_user"), db
        assert (backend["host"], backend["result"]) == ("ssh-a", "verified"), backend
        print(f"over SSH, ssh-c cut off: trigger to verified: db_users {ended(db) - auth_at:.1f}s, "
              f"backend_reload {ended(backend) - watchfiles_at:.1f}s")
        assert backend_db(lab) == 200 and "quant_user" in roles(lab)

        def waits() -> list[int]:
            return [int(line.rsplit("reopening in ", 1)[1].rstrip("s"))
                    for line in watch.text().splitlines()
                    if line.startswith(f"[ssh-c] {lab.prefix}-mlflow: log stream failed")]

        # ssh-c's streams kept trying, each waiting longer (the heals may have been quicker than that)
        watch.wait_for(lambda: len(waits()) >= 3 and waits()[-1] >= 8, 120, "ssh-c's stream to back off to 8 s")
        # ssh-c comes back: its streams reconnect
        restart_sshd(c)
        watch.wait_for(lambda: any(r.get("host") == "ssh-c" and r["result"] == "reconnected"
                                   for r in watch.records()), 60, "ssh-c to reconnect")
        (down,) = [r for r in watch.records() if r.get("host") == "ssh-c" and r["result"] == "disconnected"]
        (up,) = [r for r in watch.records() if r.get("host") == "ssh-c" and r["result"] == "reconnected"]
        assert down["kind"] == up["kind"] == "connection" and "Unable to connect to port" in down["evidence"]
        # in order, and the time away recorded (a number; no time bound: these machines are noisy)
        assert cut_at <= ended(down) <= ended(up) and isinstance(up["duration"], (int, float)), (down, up)
        assert waits() == sorted(waits()), waits()  # backoff
        assert "[ssh-c] " in watch.text() and "-> reconnected in" in watch.text()
        assert not [r for r in watch.records() if r.get("host") == "ssh-c" and r.get("kind") == "action"]
        assert len([r for r in watch.records() if r.get("kind") == "action"]) == 2
    finally:
        code = watch.stop()
    assert code == 0, watch.text()[-3000:]
    deadline = time.monotonic() + 10  # the remote commands end as sshd hangs their sessions up
    while leftovers(lab.prefix, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers(lab.prefix, tmp_path) == []
