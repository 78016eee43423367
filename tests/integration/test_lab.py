"""The lab for real: a private stack (own prefix, own ports) brought up through `scripts/lab`.

Order matters and is the file's order: incident, then `up --scenario healthy` on the same stack,
then `status`, then `down`. A finalizer runs `down` whatever happens.
"""
import json
import os
import random
import re
import string
import subprocess
import time
import urllib.request
from pathlib import Path

import docker
import pytest

from tasks.lab import images as lab_images
from tasks.lab.stack import SERVICES, SIGKILL_LINE, Lab
from tests.labkit import free_port_base

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "scripts" / "lab"
MIB = 1024 * 1024
GUNICORN_SIGKILL = re.compile(
    r"\[ERROR\] Worker \(pid:\d+\) was sent SIGKILL! Perhaps out of memory\?")


class LabRun:
    def __init__(self, prefix: str, port_base: int, client):
        self.prefix, self.port_base, self.client = prefix, port_base, client
        self.lab = Lab(prefix=prefix, port_base=port_base)

    def cli(self, *args, timeout=900, check=True):
        proc = subprocess.run([str(LAB), "--prefix", self.prefix, "--port-base", str(self.port_base), *args],
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, (
                f"scripts/lab {' '.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
        return proc

    def container(self, service):
        return self.client.containers.get(f"{self.prefix}-{service}")

    def logs(self, service) -> str:
        return self.container(service).logs(stdout=True, stderr=True).decode(errors="replace")

    def psql(self, sql, database="quant") -> str:
        proc = subprocess.run(
            ["docker", "exec", "-u", "postgres", f"{self.prefix}-postgres",
             "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"psql failed: {proc.stderr}"
        return proc.stdout.strip()

    def labelled(self):
        flt = {"label": f"quantlab.prefix={self.prefix}"}
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=flt)],
            "networks": [n.name for n in self.client.networks.list(filters=flt)],
            "volumes": [v.name for v in self.client.volumes.list(filters=flt)],
        }


def _quantlab_image_ids(client):
    return sorted(image.id for image in client.images.list(name="quantlab/*"))


def _building_lines(output: str):
    return [line for line in output.splitlines() if re.search(r"\bbuilding\b", line)]


@pytest.fixture(scope="module")
def client():
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # pragma: no cover - the suite's runner ensures an engine
        pytest.skip(f"no Docker engine: {exc}")
    if lab_images.missing_images(client):
        # What scripts/test does before the suite: build what is missing, so `up` below finds a cache.
        proc = subprocess.run([str(LAB), "images"], capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        assert lab_images.missing_images(client) == []
    return client


@pytest.fixture(scope="module")
def lab(request, client):
    prefix = "qtlab" + "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
    run = LabRun(prefix, free_port_base(26000), client)
    assert not run.lab.home.exists()
    assert run.labelled() == {"containers": [], "networks": [], "volumes": []}

    def teardown():
        run.cli("down", timeout=300, check=False)

    request.addfinalizer(teardown)
    return run


@pytest.fixture(scope="module")
def incident(lab, client):
    images_before = _quantlab_image_ids(client)
    proc = lab.cli("up", "--scenario", "incident")
    return {"output": proc.stdout + proc.stderr, "images_before": images_before}


@pytest.fixture(scope="module")
def healthy(lab, client, incident):
    images_before = _quantlab_image_ids(client)
    mlflow_before = lab.container("mlflow").id
    backend_before = lab.container("backend").id
    proc = lab.cli("up", "--scenario", "healthy")
    return {"output": proc.stdout + proc.stderr, "images_before": images_before,
            "mlflow_before": mlflow_before, "backend_before": backend_before}


# incident ------------------------------------------------------------------------------------------

def test_incident_up_reuses_cached_images(incident, client):
    output = incident["output"]
    assert "images cached" in output
    assert _building_lines(output) == []
    assert lab_images.missing_images(client) == []
    assert _quantlab_image_ids(client) == incident["images_before"]


def test_incident_containers_named_labelled_and_published_on_loopback(lab, incident):
    for service in SERVICES:
        container = lab.container(service)
        assert container.labels["quantlab.prefix"] == lab.prefix
        bindings = container.attrs["HostConfig"]["PortBindings"]
        (binding,) = [b for bs in bindings.values() for b in bs]
        assert binding["HostIp"] == "127.0.0.1"
        assert int(binding["HostPort"]) in range(lab.port_base, lab.port_base + 5)
        assert container.image.tags[0].startswith("quantlab/")
    assert (lab.lab.home / "docker-compose-ml.yml").is_file()
    state = json.loads((lab.lab.home / "state.json").read_text())
    assert state["prefix"] == lab.prefix and state["scenario"] == "incident"


def test_incident_mlflow_has_four_workers_under_420_mib(lab, incident):
    attrs = lab.container("mlflow").attrs
    assert attrs["HostConfig"]["Memory"] == 420 * MIB == 440401920
    assert not attrs["HostConfig"].get("MemoryReservation")
    command = attrs["Config"]["Cmd"]
    assert command[command.index("--workers") + 1] == "4"
    assert "--gunicorn-opts" not in command


def test_incident_mlflow_workers_were_sigkilled_by_gunicorn(lab, incident):
    logs = lab.logs("mlflow")
    assert SIGKILL_LINE in logs
    assert GUNICORN_SIGKILL.search(logs), [line for line in logs.splitlines() if "SIGKILL" in line][:5]
    # gunicorn's own lines around it: the real server ran, with four workers booted.
    assert "Starting gunicorn" in logs
    assert len(re.findall(r"\[INFO\] Booting worker with pid: \d+", logs)) >= 4


def test_incident_status_counts_the_oom_kills(lab, incident):
    """Workers die inside a container that keeps running: the status reads the kernel's count."""
    output = lab.cli("status", timeout=120).stdout
    row = next(line for line in output.splitlines() if line.startswith("mlflow "))
    assert re.search(r"(\d+ kills|yes)\s*$", row), row


def test_incident_postgres_rejects_quant_user(lab, incident):
    assert 'password authentication failed for user "quant_user"' in lab.logs("postgres")
    assert lab.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'quant_user'", "postgres") == "0"


def test_incident_backend_cannot_reach_the_database(lab, incident):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{lab.port_base + 4}/health/db", timeout=20)
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
    else:
        pytest.fail("the backend's database check answered 200 without the quant_user role")


def test_incident_leftover_test_users_with_dependent_rows(lab, incident):
    counts = lab.psql(
        "SELECT (SELECT count(*) FROM users WHERE username LIKE 'concurrent\\_%'),"
        " (SELECT count(*) FROM users WHERE username LIKE 'test\\_%'),"
        " (SELECT count(*) FROM user_sessions s JOIN users u ON u.id = s.user_id"
        "   WHERE u.username LIKE 'concurrent\\_%' OR u.username LIKE 'test\\_%'),"
        " (SELECT count(*) FROM portfolios p JOIN users u ON u.id = p.user_id"
        "   WHERE u.username LIKE 'test\\_%'),"
        " (SELECT count(*) FROM users WHERE username LIKE '%.%')").split("|")
    concurrent, test, sessions, portfolios, real = map(int, counts)
    assert concurrent > 0 and test > 0
    assert sessions > 0 and portfolios > 0
    assert real == 40
    names = lab.psql("SELECT username FROM users WHERE username LIKE 'concurrent\\_%'").splitlines()
    assert all(re.fullmatch(r"concurrent_\d{10}", n) for n in names), names


def test_incident_backend_logged_duplicate_registrations(lab, incident):
    logs = lab.logs("backend")
    duplicates = re.findall(r"Username already exists: (concurrent_\d+)", logs)
    assert duplicates
    existing = set(lab.psql("SELECT username FROM users WHERE username LIKE 'concurrent\\_%'").splitlines())
    assert set(duplicates) <= existing


def test_incident_audit_log_has_dead_tuples(lab, incident):
    dead = int(lab.psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'audit_log'"))
    assert dead > 0


# healthy -------------------------------------------------------------------------------------------

def test_healthy_up_converges_without_rebuilding(healthy, lab, client):
    output = healthy["output"]
    assert "images cached" in output
    assert _building_lines(output) == []
    assert _quantlab_image_ids(client) == healthy["images_before"]
    assert lab.container("mlflow").id != healthy["mlflow_before"]  # recreated with the fix
    assert lab.container("backend").id == healthy["backend_before"]  # unchanged spec, kept
    state = json.loads((lab.lab.home / "state.json").read_text())
    assert state["scenario"] == "healthy"


def test_healthy_mlflow_memory_and_command(healthy, lab):
    attrs = lab.container("mlflow").attrs
    assert attrs["HostConfig"]["Memory"] == 1024 * MIB
    assert attrs["HostConfig"]["MemoryReservation"] == 512 * MIB
    command = attrs["Config"]["Cmd"]
    assert command[command.index("--workers") + 1] == "2"
    opts = command[command.index("--gunicorn-opts") + 1].split()
    for flag, value in (("--timeout", "60"), ("--max-requests", "100"), ("--max-requests-jitter", "10"),
                        ("--worker-class", "sync")):
        assert opts[opts.index(flag) + 1] == value, opts
    assert attrs["State"]["Running"] and not attrs["State"]["OOMKilled"]


def test_healthy_mlflow_answers_health(healthy, lab):
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.port_base}/health", timeout=10) as response:
        assert response.status == 200
        assert response.read().decode().strip() == "OK"


def _gunicorn(container_name: str):
    """(the gunicorn master's command line, its worker pids), from `ps` inside the container."""
    out = subprocess.run(["docker", "exec", container_name, "ps", "-eo", "pid,ppid,args"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    procs = {}
    for line in out.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        procs[int(pid)] = (int(ppid), args)

    def is_gunicorn(args):
        # `gunicorn ...`, `python .../gunicorn ...`, `python -m gunicorn ...`; not `mlflow server --gunicorn-opts`
        tokens = args.split()
        return (any(Path(token).name == "gunicorn" for token in tokens[:2])
                or tokens[1:3] == ["-m", "gunicorn"])

    masters = [pid for pid, (ppid, args) in procs.items()
               if is_gunicorn(args) and not is_gunicorn(procs.get(ppid, (0, ""))[1])]
    assert len(masters) == 1, out
    return procs[masters[0]][1], [pid for pid, (ppid, _) in procs.items() if ppid == masters[0]]


def test_healthy_mlflow_runs_two_gunicorn_workers(healthy, lab):
    # --max-requests recycles workers; a recycle can briefly show one. Look again a few times.
    seen = []
    for _ in range(10):
        master, workers = _gunicorn(f"{lab.prefix}-mlflow")
        seen.append(len(workers))
        if seen[-1] == 2:
            break
        time.sleep(1)
    assert seen[-1] == 2, seen
    # the settings reached gunicorn itself
    assert "--max-requests 100" in master and "--timeout 60" in master, master


def test_healthy_quant_user_logs_in_over_tcp_with_its_secret(healthy, lab):
    secret = lab.lab.home / "secrets" / "quant_user_password"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    base = ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(lab.port_base + 1), "-U", "quant_user",
            "-d", "quant", "-c", "SELECT current_user, count(*) FROM users"]
    env = {**os.environ, "PGPASSWORD": secret.read_text().strip(), "PGCONNECT_TIMEOUT": "10"}
    ok = subprocess.run(base, capture_output=True, text=True, timeout=30, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "quant_user|40"
    # TCP really checks the password (scram-sha-256), it does not trust.
    bad = subprocess.run(base, capture_output=True, text=True, timeout=30,
                         env={**env, "PGPASSWORD": "not-the-password"})
    assert bad.returncode != 0
    assert 'password authentication failed for user "quant_user"' in bad.stderr
    method = lab.psql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                      "WHERE rolname = 'quant_user'", "postgres")
    assert method == "t"


def test_healthy_backend_reaches_the_database(healthy, lab):
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.port_base + 4}/health/db", timeout=20) as response:
        assert response.status == 200
        assert json.loads(response.read())["users"] == 40


def test_healthy_no_test_users_left(healthy, lab):
    assert lab.psql("SELECT count(*) FROM users WHERE username LIKE 'concurrent\\_%' "
                    "OR username LIKE 'test\\_%'") == "0"
    assert lab.psql("SELECT count(*) FROM users") == "40"


# status and down -----------------------------------------------------------------------------------

def test_status_prints_a_row_per_service(healthy, lab):
    output = lab.cli("status", timeout=120).stdout
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0].split() == ["SERVICE", "CONTAINER", "STATE", "HEALTH", "MEMORY", "RESTARTS", "OOM_KILLED"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(SERVICES)
    for service, line in rows.items():
        cells = line.split()
        assert cells[1] == f"{lab.prefix}-{service}"
        assert cells[2] == "running"
        assert cells[-1] in ("no", "yes")
        assert re.search(r"\d+ MiB / (\d+ MiB|no limit)", line), line
    assert re.search(r"\d+ MiB / 1024 MiB", rows["mlflow"]), rows["mlflow"]
    assert rows["mlflow"].split()[-1] == "no"


def test_down_leaves_nothing_of_this_prefix_only(lab, client, healthy):
    assert lab.labelled()["containers"]
    proc = lab.cli("down", timeout=300)
    assert lab.labelled() == {"containers": [], "networks": [], "volumes": []}
    for service in SERVICES:
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(f"{lab.prefix}-{service}")
    assert not lab.lab.home.exists()
    if not os.environ.get("QUANTLAB_HOME"):
        assert lab.lab.home == REPO / ".lab" / lab.prefix
    # Nothing of another prefix was removed (other labs, e.g. the lead's `quant`, keep running).
    removed = re.search(r"is down \(removed (.*)\)", proc.stdout).group(1).split(", ")
    assert removed and all(name.startswith(f"{lab.prefix}-") for name in removed), removed
    assert set(removed) >= {f"{lab.prefix}-{s}" for s in SERVICES} | {f"{lab.prefix}-net", f"{lab.prefix}-pgdata"}
    # The images stay cached for the next run.
    assert lab_images.missing_images(client) == []
