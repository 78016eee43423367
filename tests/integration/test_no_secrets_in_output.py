"""No deploy shows a secret: every deploy in deploys/ against one private lab (incident scenario), first
planned (`--dry -vvv --debug --json`, and `--debug-operations` for those reading containers and roles),
then run for real (`-y -vvv --debug --json`), and everything they printed, wrote or left behind is
searched for each of the lab's secrets (the files under .lab/<prefix>/secrets/), as written and as
base64 (each alignment), URL-encoded and hex: no hit.

Searched: stdout and stderr of every run; the reports (cleanup, verify_stack, remediate and its run
record, and every run's QUANT_REPORT document); every file the deploys wrote (the compose file they
patch, the scheduled job's script and log, root's crontab); every file under /tmp changed since the
first run (env and create-request files a recreate uses must be gone); the lab's folder but for its
own secret files and `.env`; and what PostgreSQL logged meanwhile.

onboard_host runs against one fresh `sshhost` over real SSH (tests/fleet.py: logged in as `admin`
with sudo, the engine's socket mounted, engine "socket"): planned, then for real (it installs
Debian's docker.io, makes the deploy user, daemon.json, sudoers, the record's folder and the stack's
compose file), then again, which changes nothing. The `onboard` block has no secret source of its
own (public keys only); what onboarding takes that names secrets is the host's `mlflow` block,
whose `secret_env` points at the lab's secret files (PGPASSWORD, AWS_SECRET_ACCESS_KEY) and which
it renders into the compose file as `${VAR}`: the host's data here is the lab's own, all of it (the
record's folder at its default on the host). Besides its output and reports, every file under the
host's /etc, /opt, /srv, /home, /root, /tmp, /var/tmp, /var/log and /var/lib/quantlab is searched.
The compose-style lab is not brought up here: its compose file holds `${VAR}` and `env_file`
names, no value, and its containers are read through the same filtered fact
(tests/unit/test_docker_facts.py, tests/integration/test_docker_fact.py).
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import random
import re
import subprocess
import tarfile
import time
from pathlib import Path
from urllib.parse import quote

import docker.errors
import pytest

from tasks.lab.inventory import lab_host_data
from tests.fleet import Fleet, _keygen
from tests.labkit import GROUP_DATA, PYINFRA, REPO, lab_up, pyinfra_process, write_inventory

pytestmark = pytest.mark.lab

DEPLOYS = REPO / "deploys"
VERBOSE = ("-vvv", "--debug", "--json")
# What onboarding writes on its host lies under these (the record's folder, the stack, the deploy
# user's home, /etc for daemon.json and sudoers); pyinfra's uploads pass through /tmp.
HOST_FOLDERS = ("/etc", "/opt", "/srv", "/home", "/root", "/tmp", "/var/tmp", "/var/log", "/var/lib/quantlab")
STACK_COMPOSE, DAEMON_JSON, SUDOERS = "/opt/quant-stack/docker-compose.yml", "/etc/docker/daemon.json", \
    "/etc/sudoers.d/quant-deploy"


def encodings(secret: str) -> set[str]:
    """The secret and what it looks like inside base64 (any alignment), URL-encoding and hex."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), raw.hex()}
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + raw).decode()
            start = -(-offset // 3) * 4  # the first group that holds only the secret's bytes
            end = (offset + len(raw)) // 3 * 4
            if end - start >= 8:
                forms.add(text[start:end])
    return forms


class Sweep:
    """The runs of this module and where to search."""

    def __init__(self, lab, folder: Path):
        self.lab, self.folder = lab, folder
        self.secrets = {p.name: p.read_text().strip() for p in (REPO / ".lab" / lab.prefix / "secrets").iterdir()}
        assert len(self.secrets) >= 4 and all(len(v) >= 16 for v in self.secrets.values())
        self.forms = {name: encodings(value) for name, value in self.secrets.items()}
        self.outputs: dict[str, str] = {}
        self.codes: dict[str, int] = {}
        self.results: dict[str, dict | None] = {}
        self.reports: dict[str, Path] = {}  # each run's QUANT_REPORT document
        self.seconds: dict[str, float] = {}
        self.started = time.time()
        # Two cores shared with other tests: MLflow may take longer than 5 s to answer.
        stack = {**lab_host_data(lab.prefix)["stack"], "http_timeout": 20}
        self.inventory = write_inventory(folder / "inventory.py", lab.prefix, host_data={"stack": stack})
        self.env = {
            "QUANT_CLEANUP_REPORT": str(folder / "reports" / "cleanup.json"),
            "QUANTLAB_VERIFY_REPORT": str(folder / "reports" / "verify.json"),
        }

    def run(self, label: str, deploy: str, *args: str, inventory: Path | None = None, timeout: int = 900) -> None:
        command = [str(PYINFRA), *args, "--group-data", str(GROUP_DATA), str(inventory or self.inventory),
                   str(DEPLOYS / deploy)]
        self.reports[label] = self.folder / "reports" / f"run-{len(self.reports):02d}.json"
        began = time.monotonic()
        proc = pyinfra_process(*command[1:], env={**self.env, "QUANT_REPORT": str(self.reports[label])},
                               timeout=timeout)
        self.seconds[label] = round(time.monotonic() - began, 1)
        self.outputs[label] = f"$ {' '.join(command)}\n{proc.stdout}\n{proc.stderr}"
        self.codes[label] = proc.returncode
        start = proc.stdout.find("{")
        try:
            self.results[label] = json.loads(proc.stdout[start:]) if start >= 0 else None
        except ValueError:
            self.results[label] = None

    def hits(self, where: str, text: str) -> list[str]:
        return [f"{where}: the {name} secret ({'as written' if form == self.secrets[name] else 'encoded'})"
                for name, forms in self.forms.items() for form in forms if form in text]


@pytest.fixture(scope="module")
def sweep(request, tmp_path_factory):
    lab = lab_up(request, "qtns", 12000, "incident")
    folder = tmp_path_factory.mktemp("no-secrets")
    sweep = Sweep(lab, folder)

    # The scheduled job, installed in a private folder under a name of its own; removed at the end.
    job = {"name": f"quant-db-cleanup-{lab.prefix}", "env": {"QUANTLAB_PREFIX": lab.prefix},
           "minute": 43, "hour": 4, "script_path": str(folder / "job" / "cleanup.sh"),
           "log_file": str(folder / "job" / "cleanup.log"), "lock_file": str(folder / "job" / "cleanup.lock"),
           "report_path": str(folder / "reports" / "scheduled-cleanup.json")}
    schedule = folder / "schedule.py"
    schedule.write_text(f"hosts = [('@local', {{'cleanup_schedule': {job!r}}})]\n")
    gone = folder / "schedule-gone.py"
    gone.write_text(f"hosts = [('@local', {{'cleanup_schedule': {({**job, 'present': False})!r}}})]\n")
    request.addfinalizer(lambda: subprocess.run(
        [str(PYINFRA), "-y", str(gone), str(DEPLOYS / "schedule_cleanup.py")], cwd=REPO, capture_output=True))

    # One fresh host over real SSH for onboarding, with the lab's host data (its mlflow block's
    # secret_env names the lab's secret files) but the record's folder at its default there.
    fleet = Fleet(f"qtnso{random.randrange(16 ** 4):04x}", folder / "fleet", 1, docker_socket=True, login="admin")
    request.addfinalizer(fleet.remove)
    fleet.start()
    _keygen(folder / "deploy_ed25519", "deploy@ops")
    (host,) = fleet.hosts
    data = {key: value for key, value in lab_host_data(lab.prefix).items() if key != "remediate"}
    assert set(data["mlflow"]["secret_env"]) == {"PGPASSWORD", "AWS_SECRET_ACCESS_KEY"}, data["mlflow"]
    onboard = fleet.write_inventory(folder / "onboard.py", {host.name: {
        **data, **host.pyinfra_host_data(),
        "onboard": {"engine": "socket", "authorized_keys": [{"file": str(folder / "deploy_ed25519.pub")}]}}})
    sweep.onboard_host = host

    # Plans first: nothing changes, every fact is read and printed.
    for deploy in ("fix_mlflow.py", "db_users.py", "cleanup_database.py", "remediate.py",
                   "fix_backend_reload.py", "verify_stack.py"):
        sweep.run(f"{deploy} --dry", deploy, "--dry", *VERBOSE)
    for deploy in ("fix_mlflow.py", "db_users.py", "remediate.py", "fix_backend_reload.py"):
        sweep.run(f"{deploy} --debug-operations", deploy, "--dry", "--debug-operations")
    sweep.run("schedule_cleanup.py --dry", "schedule_cleanup.py", "--dry", *VERBOSE, inventory=schedule)
    sweep.run("onboard_host.py --dry", "onboard_host.py", "--dry", *VERBOSE, inventory=onboard)

    # Then for real: each fixes its part of the incident (a recreate of MLflow and of the backend,
    # the missing role with its password, the leftover rows), then the checks log in with the
    # roles' passwords.
    for deploy in ("fix_mlflow.py", "db_users.py", "cleanup_database.py", "fix_backend_reload.py",
                   "remediate.py"):
        sweep.run(f"{deploy} -y", deploy, "-y", *VERBOSE)
    # The fixed stack, its log lines searched from now on (the incident's are in the logs before).
    sweep.env["QUANTLAB_VERIFY_SINCE"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    sweep.run("verify_stack.py -y", "verify_stack.py", "-y", *VERBOSE)
    sweep.run("schedule_cleanup.py -y", "schedule_cleanup.py", "-y", *VERBOSE, inventory=schedule)
    # Onboarding for real (Debian's docker.io from the network), then again: nothing to change.
    sweep.run("onboard_host.py -y", "onboard_host.py", "-y", *VERBOSE, inventory=onboard)
    sweep.run("onboard_host.py -y again", "onboard_host.py", "-y", *VERBOSE, inventory=onboard)
    sweep.job = job
    (folder / "seconds.json").write_text(json.dumps(sweep.seconds, indent=1))  # where the time goes
    return sweep


def host_files(host) -> tuple[dict[str, str], set[str]]:
    """Every regular file (up to 20 MiB) under HOST_FOLDERS on the host, read through the engine,
    and the folders seen."""
    files: dict[str, str] = {}
    folders: set[str] = set()
    for folder in HOST_FOLDERS:
        try:
            stream, _ = host.container.get_archive(folder)
        except docker.errors.NotFound:
            continue
        parent = os.path.dirname(folder)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r") as tar:
            for member in tar:
                path = os.path.join(parent, member.name)
                if member.isdir():
                    folders.add(path)
                elif member.isfile() and member.size <= 20 << 20:
                    files[path] = tar.extractfile(member).read().decode(errors="replace")
    return files, folders


def test_the_search_finds_a_secret_in_every_form_it_looks_for(sweep):
    for name, secret in sweep.secrets.items():
        for prefix in ("", "a", "ab", "PGPASSWORD="):
            text = f"{prefix}{secret} and more\n"
            assert sweep.hits("probe", base64.b64encode(text.encode()).decode()), (name, prefix)
            assert sweep.hits("probe", base64.urlsafe_b64encode(text.encode()).decode()), (name, prefix)
        assert sweep.hits("probe", f"x={quote(secret, safe='')}&y") and sweep.hits("probe", secret.encode().hex())


def test_every_run_happened(sweep):
    assert len(sweep.outputs) == 21, sorted(sweep.outputs)
    # Each real run did its part (so the paths that handle secrets ran): a failure here is shown
    # with its output; none of it holds a secret (the next tests say so).
    failed = {label: sweep.outputs[label][-3000:] for label, code in sweep.codes.items()
              if code != 0}
    report = Path(sweep.env["QUANTLAB_VERIFY_REPORT"])
    if report.exists():
        checks = [c for h in json.loads(report.read_text())["hosts"].values() for c in h["checks"]]
        failed["verify checks that failed"] = [(c["name"], c["evidence"]) for c in checks if c["status"] == "fail"]
        assert any(c["name"] == "role quant_user can log in" and c["status"] == "pass" for c in checks), checks
    assert not any(failed.values()), failed
    # The real runs changed what the incident broke: a recreate of MLflow and of the backend
    # (their env, secrets included, re-read in full), the role and its password, the rows.
    for deploy in ("fix_mlflow.py", "db_users.py", "cleanup_database.py", "fix_backend_reload.py"):
        results = sweep.results[f"{deploy} -y"]
        assert results and results["results"]["totals"]["success"] >= 1, (deploy, results)


def test_onboarding_ran_for_real_then_changed_nothing(sweep):
    first, again = sweep.results["onboard_host.py -y"], sweep.results["onboard_host.py -y again"]
    assert first and first["results"]["totals"]["success"] >= 10, sweep.outputs["onboard_host.py -y"][-3000:]
    assert again and again["results"]["totals"]["error"] == 0, sweep.outputs["onboard_host.py -y again"][-3000:]
    changed = [op["name"] for op in again["results"]["operations"] if op["success"]]
    assert again["results"]["totals"]["success"] == 0 and not changed, changed
    assert "checks passed" in sweep.outputs["onboard_host.py -y again"]  # its verification ran


def planned_and_changed(sweep, deploy: str) -> tuple[list[str], list[str]]:
    """The operations the deploy's --dry planned as a change, and those its real run changed,
    from their run documents (QUANT_REPORT)."""
    def ops(label: str, status: str) -> list[str]:
        document = json.loads(sweep.reports[label].read_text())
        (host,) = document["hosts"].values()
        return [op["name"] for op in host["operations"] if op["status"] == status]
    return ops(f"{deploy} --dry", "planned"), ops(f"{deploy} -y", "changed")


@pytest.mark.parametrize("deploy", ["fix_mlflow.py", "db_users.py", "cleanup_database.py",
                                    "fix_backend_reload.py", "schedule_cleanup.py", "onboard_host.py"])
def test_each_dry_run_named_the_changes_its_real_run_made(sweep, deploy):
    """--dry tells the truth: planned on the incident, run for real after the deploys before it
    fixed their own parts (none of which this one's plan reads)."""
    planned, changed = planned_and_changed(sweep, deploy)
    assert changed, sweep.outputs[f"{deploy} -y"][-3000:]
    assert planned == changed, (planned, changed)


def test_no_output_shows_a_secret(sweep):
    hits = [hit for label, text in sweep.outputs.items() for hit in sweep.hits(label, text)]
    assert not hits, hits


def test_the_plans_show_changes_without_values(sweep):
    plan = sweep.outputs["fix_mlflow.py --dry"]
    assert "env.GUNICORN_CMD_ARGS" in plan  # the incident's drift is planned, by name
    # -vvv printed the container fact's raw output: its secret env entries as digests
    for key in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY"):
        assert re.search(rf"S [0-9a-f]{{64}} {key}\b", plan), key
    assert "--> Operations:" in sweep.outputs["fix_mlflow.py --debug-operations"]


def test_no_report_shows_a_secret(sweep):
    reports = [Path(sweep.env["QUANT_CLEANUP_REPORT"]), Path(sweep.env["QUANTLAB_VERIFY_REPORT"])]
    home = REPO / ".lab" / sweep.lab.prefix
    reports += [p for p in (home / "remediation-reports").glob("*") if p.is_file()]
    assert all(p.exists() for p in reports[:2]), reports
    # Every run's document, onboarding's (plan, run, run again) among them.
    assert all(sweep.reports[f"onboard_host.py {run}"].exists() for run in ("--dry", "-y", "-y again"))
    reports += [p for p in sweep.reports.values() if p.exists()]
    hits = []
    for path in reports:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        hits += sweep.hits(str(path), path.read_text())
    assert not hits, hits


def test_no_file_the_deploys_wrote_shows_a_secret(sweep):
    home = REPO / ".lab" / sweep.lab.prefix
    written = [p for p in home.rglob("*") if p.is_file() and "secrets" not in p.relative_to(home).parts
               and p.name != ".env"]
    assert home / "docker-compose-ml.yml" in written
    script = Path(sweep.job["script_path"])
    assert script.exists() and script.stat().st_mode & 0o777 == 0o700
    written += [script] + [p for p in Path(sweep.job["log_file"]).parent.glob("*") if p.is_file()]
    hits = []
    for path in written:
        hits += sweep.hits(str(path), path.read_text(errors="replace"))
    crontab = subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout
    hits += sweep.hits("crontab", crontab)
    assert not hits, hits


def test_no_file_onboarding_left_on_its_host_shows_a_secret(sweep):
    files, folders = host_files(sweep.onboard_host)
    assert {STACK_COMPOSE, DAEMON_JSON, SUDOERS} <= set(files) and "/var/lib/quantlab" in folders, \
        sorted(folders)[:50]
    # The lab's secret_env reached the compose file by name only, for compose to read at `up`.
    for name in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY"):
        assert f"${{{name}:?set {name}}}" in files[STACK_COMPOSE], files[STACK_COMPOSE]
    hits = [hit for path, text in files.items() for hit in sweep.hits(f"{sweep.onboard_host.name}:{path}", text)]
    assert not hits, hits


def test_nothing_left_in_tmp_holds_a_secret(sweep):
    # Env files and create requests a recreate uploads are removed right after use; any other
    # file a run left in /tmp is searched too (other tests' files cannot hold this lab's secrets).
    # Not the engine's own: for every `docker exec`, the containers' healthchecks included (MLflow's
    # every 5 s, after the runs too), runc writes the process spec (the container's env with it)
    # to /tmp/runc-process<N> here and removes it once the process starts.
    hits = []
    # Where the checkout itself is under /tmp (a CI clone), the lab's own secret files and .env are
    # where they belong (test_no_file_the_deploys_wrote_shows_a_secret searches the rest of its folder).
    home = REPO / ".lab" / sweep.lab.prefix
    own = (home / "secrets", home / ".env")
    # os.walk, not rglob: other workers' runs remove their temp folders while this walks /tmp.
    found = (Path(top) / name for top, _, names in os.walk("/tmp", onerror=lambda _: None) for name in names)
    for path in found:
        if any(path == mine or mine in path.parents for mine in own):
            continue
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_mtime < sweep.started - 5:
                continue
            if path.parent == Path("/tmp") and path.name.startswith("runc-process"):
                continue
            if path.stat().st_size > 20 << 20:
                continue
            hits += sweep.hits(str(path), path.read_bytes().decode(errors="replace"))
        except OSError:
            continue
    assert not hits, hits


def test_postgresql_logged_no_secret(sweep):
    since = str(int(sweep.started))
    logs = subprocess.run(["docker", "logs", "--since", since, sweep.lab.name("postgres")],
                          capture_output=True, text=True, timeout=60)
    hits = sweep.hits("postgres log", logs.stdout + logs.stderr)
    assert not hits, hits
