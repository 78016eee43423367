"""The watcher program's parts without an engine: the commands it runs, the inventory read with
pyinfra's loader (SSH connection data, container roles, db roles), lines and events through the
program into the audit file, and a local stream reopened after it ends and stopped for good."""
from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tasks.core.watch import Decision, Settings
from tasks.watch.hosts import WatchHost, load_hosts
from tasks.watch.program import Program, remediation_command, remediation_env
from tasks.watch.streams import NOW, Stream, event_mark, events_command, log_mark, logs_command

SIGKILL = "2026-12-02T04:00:00.1Z [ERROR] Worker (pid:{}) was sent SIGKILL! Perhaps out of memory?"


@pytest.fixture(autouse=True)
def quick_reopen(monkeypatch):
    """Streams here reopen after 0.1 s, 0.2 s, ... instead of 1 s, 2 s, ...: the same backoff, faster."""
    monkeypatch.setattr(Stream, "REOPEN_DELAY", 0.1)


def test_commands_follow_the_catalogs_containers_and_limit_the_deploy_to_the_host():
    events = events_command(["quant-mlflow", "quant-postgres"])
    assert events.startswith('exec docker events --since "$(date +%s)" --format \'{{json .}}\' --filter type=container')
    for part in ("event=die", "event=oom", "event=health_status", "event=restart",
                 "container=quant-mlflow", "container=quant-mlflow-previous", "container=quant-postgres"):
        assert f"--filter {part}" in events
    assert logs_command("quant-mlflow") == \
        'exec docker logs -f --timestamps --since "$(date +%s)" quant-mlflow 2>&1'
    assert log_mark("2026-12-02T04:47:45.12Z [ERROR] x") == "2026-12-02T04:47:45.120000000Z"
    assert log_mark("2026-12-02T04:47:45Z x") == "2026-12-02T04:47:45.000000000Z"
    assert log_mark("no time here") is None
    assert event_mark('{"timeNano": 1800000000123456789}') == "1800000000.123456789"
    assert event_mark("garbage") is None
    decision = Decision("ml-2", "fix_mlflow", "quant-mlflow", "fix_mlflow:quant-mlflow", "s", "e", ())
    command = remediation_command("inventories/prod.py", decision, ["inventories/group_data"])
    assert command[1:] == ["-y", "--group-data", "inventories/group_data", "inventories/prod.py",
                           command[5], "--limit", "ml-2"]
    assert command[5].endswith("deploys/remediate.py")
    # forced mode: only the watcher's finding runs (tasks/operations/remediate.py reads it)
    db = Decision("ml-2", "db_users", "quant_user", "db_users:quant_user", "s", "e", ())
    env = remediation_env(db, {"PATH": "/usr/bin", "QUANT_REMEDIATE_ONLY": "fix_mlflow:other"})
    assert env == {"PATH": "/usr/bin", "QUANT_REMEDIATE_ONLY": "db_users:quant_user"}


def test_inventory_is_read_with_pyinfras_loader(tmp_path):
    key = tmp_path / "id_ed25519"
    (tmp_path / "inventory.py").write_text(
        "hosts = [\n"
        "  ('@local', {'remediate': {'containers': {'mlflow': 'lab-mlflow', 'postgres': 'lab-pg'}},\n"
        "              'db_roles': [{'name': 'quant_user', 'login': True}]}),\n"
        f"  ('ml-2', {{'ssh_hostname': '127.0.0.1', 'ssh_port': 2222, 'ssh_user': 'deploy', 'ssh_key': '{key}',\n"
        "            'ssh_known_hosts_file': '/tmp/kh', 'mlflow': {'container_name': 'm2'}}),\n"
        "]\n")
    local, ssh = load_hosts(str(tmp_path / "inventory.py"))
    assert local.local and local.containers == {"mlflow": "lab-mlflow", "postgres": "lab-pg"}
    assert local.db_roles == ["quant_user"] and local.role_of("lab-mlflow-previous") == "mlflow"
    assert not ssh.local and ssh.containers == {"mlflow": "m2"} and ssh.db_roles == []
    assert ssh.ssh == {"hostname": "127.0.0.1", "port": 2222, "username": "deploy", "key_filename": str(key),
                       "known_hosts": "/tmp/kh", "strict": True}
    assert [s.id for s in local.catalog][0] == "mlflow-worker-sigkill"


def test_lines_and_events_through_the_program_dry(tmp_path):
    host = WatchHost("h1", True, {"mlflow": "q-mlflow", "backend": "q-backend"})
    out = io.StringIO()
    audit = tmp_path / "audit.jsonl"
    program = Program("inv.py", [host], str(audit), dry=True, settings=Settings(grace=0, dry=True), out=out)
    for pid in range(1000):
        program.handle_line("h1", "log", "q-mlflow", SIGKILL.format(pid))
    program.handle_line("h1", "event", "*", json.dumps(
        {"Action": "oom", "Actor": {"Attributes": {"name": "q-mlflow"}}, "timeNano": 1_800_000_000 * 10**9}))
    program.handle_line("h1", "event", "*", "not json")
    program.handle_line("h1", "log", "q-redis", SIGKILL.format(1))  # not a followed container
    program.handle_line("h1", "status", "q-mlflow", "log stream ended; reopening in 2s")
    program.write_audit()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    actions = [r for r in records if r["kind"] == "action"]
    assert [a["result"] for a in actions] == ["dry-run"]
    assert [r["result"] for r in records if r["kind"] == "finding"][0] == "would run"  # dry: one decision, nothing run, then throttled
    assert any(r["result"] == "throttled" for r in records)
    assert "-> dry-run" in out.getvalue() and "[h1] q-mlflow: log stream ended" in out.getvalue()
    program.audit.close()


def test_local_stream_is_reopened_after_it_ends_and_stop_ends_its_process(tmp_path):
    lines: list[tuple] = []
    marker = tmp_path / "pids"
    host = WatchHost("h1", True, {})
    command = f"echo $$ >> {marker}; echo one; echo two; exec sleep 0.5"
    stream = Stream(host, "log", "c", command, lambda *a: lines.append(a), ssh=None)  # type: ignore[arg-type]
    stream.start()
    deadline = time.monotonic() + 10
    while stream.opened < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stream.opened >= 2  # ended, reopened after its backoff
    assert ("h1", "log", "c", "one") in lines
    assert any(kind == "status" and "stream ended; reopening in" in line for _, kind, _, line in lines)
    long_running = Stream(host, "log", "c", f"echo $$ > {tmp_path / 'long'}; exec sleep 600", lambda *a: None,
                          ssh=None)  # type: ignore[arg-type]
    long_running.start()
    while not (tmp_path / "long").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((tmp_path / "long").read_text())
    long_running.stop()
    stream.stop()
    long_running.join(5)
    stream.join(5)
    assert not long_running.is_alive() and not stream.is_alive()
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert os.path.exists(marker)


def test_a_reopened_stream_resumes_from_its_last_line_and_skips_what_it_delivered(tmp_path):
    """The source here is a file (standing in for a container's log) that gets a line every
    0.1 s; each open prints every line at or after --since, then the stream drops after 0.5 s.
    Whatever was written while it was down is delivered once, nothing twice."""
    log = tmp_path / "log"
    writer_stop = tmp_path / "stop"
    writer = subprocess.Popen(
        ["sh", "-c", f"i=0; while [ ! -e {writer_stop} ]; do i=$((i+1)); "
                     f"echo \"2026-12-02T04:00:00.$(printf %09d $i)Z line $i\" >> {log}; sleep 0.1; done"])
    commands = []

    def command(since: str) -> str:
        commands.append(since)
        start = "" if since == NOW else since.strip("'")
        return (f"timeout 0.5 sh -c 'while true; do awk -v s=\"{start}\" \"\\$1 >= s\" {log}; "
                f"sleep 0.05; done' | awk '!seen[$0]++'")

    lines: list[str] = []
    stream = Stream(WatchHost("h1", True, {}), "log", "c", command, lambda *a: lines.append(a[3]),
                    ssh=None, mark=log_mark)  # type: ignore[arg-type]
    try:
        stream.start()
        deadline = time.monotonic() + 15
        while stream.opened < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stream.stop()
        stream.join(5)
        writer_stop.touch()
        writer.wait(5)
    delivered = [line for line in lines if line.startswith("2026-")]
    numbers = [int(line.rsplit(" ", 1)[1]) for line in delivered]
    assert stream.opened >= 3 and commands[0] == NOW and commands[1].startswith("2026-12-02T04:00:00.")
    assert numbers == sorted(set(numbers))  # nothing twice, in order
    assert numbers == list(range(1, numbers[-1] + 1))  # nothing lost across the drops


def test_stopping_ends_a_running_remediation_and_its_children(tmp_path, monkeypatch):
    """SIGTERM's path (Program.stop, then the loop's shutdown) while a remediation runs: its whole
    process group ends (here a stand-in for pyinfra that starts a child of its own)."""
    pidfile = tmp_path / "child.pid"
    monkeypatch.setattr("tasks.watch.program.remediation_command", lambda *a, **k: [
        "sh", "-c", f"sleep 600 & echo $! > {pidfile}; wait"])
    host = WatchHost("h1", True, {"mlflow": "q-mlflow"})
    program = Program("inv.py", [host], str(tmp_path / "audit.jsonl"), out=io.StringIO())
    program.hosts = []  # no streams: lines are fed by hand
    program.handle_line("h1", "log", "q-mlflow", SIGKILL.format(1))
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    program.stop()
    assert program.run() == 0
    time.sleep(0.3)
    assert not Path(f"/proc/{grandchild}").exists() or \
        Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["result"] for r in records if r["kind"] == "finding"] == ["started"]
    (action,) = [r for r in records if r["kind"] == "action"]
    assert action["result"] == "interrupted" and action["detail"].startswith("exit -15")


def test_a_stream_without_a_line_yet_resumes_from_the_hosts_time_of_its_first_open():
    """Not from "now" again: a container recreated before its first line printed it at start."""
    commands: list[str] = []
    lines: list[tuple] = []

    def command(since: str) -> str:
        commands.append(since)
        return "exec sleep 0.3"  # ends without a line

    stream = Stream(WatchHost("h1", True, {}), "log", "c", command, lambda *a: lines.append(a),
                    ssh=None, mark=log_mark)  # type: ignore[arg-type]
    before = time.time()
    try:
        stream.start()
        deadline = time.monotonic() + 10
        while len(commands) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stream.stop()
        stream.join(5)
    assert commands[0] == NOW and stream.origin is not None
    assert commands[1] == stream.origin and before - 1 < float(stream.origin) < time.time()
    assert not any(kind == "log" for _, kind, _, _ in lines)  # the host's clock is not a log line
    assert stream.current_command().startswith('echo "@quant-watch-origin $(date +%s.%N)"; exec sleep')


def test_the_program_gives_each_host_its_own_catalog(tmp_path):
    import yaml
    packaged = yaml.safe_load((Path(__file__).parents[2] / "tasks/core/signatures.yml").read_text())["signatures"]
    own = tmp_path / "catalog.yml"
    own.write_text(yaml.safe_dump({"signatures": [s for s in packaged if s["id"] == "backend-watchfiles-io-error"]}))
    hosts = [WatchHost("h1", True, {"mlflow": "m"}), WatchHost("h2", True, {"backend": "b"}, catalog_path=str(own))]
    program = Program("inv.py", hosts, None, dry=True, out=io.StringIO())
    assert [s.id for s in program.watcher.catalog_of("h2")] == ["backend-watchfiles-io-error"]
    assert program.watcher.catalog_of("h1")[0].id == "mlflow-worker-sigkill"


def test_a_watcher_restarted_on_its_audit_keeps_the_earlier_ones_throttle(tmp_path, monkeypatch):
    """Its supervisor restarted it during the incident: the fix the earlier watcher verified a
    minute ago is not run again for the same lines (forced runs skip the host record's
    throttle). The earlier watcher's last line was cut short by its death: skipped."""
    audit = tmp_path / "audit.jsonl"
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now - 60))
    common = {"host": "h1", "remediation": "fix_mlflow", "target": "q-mlflow", "signature": "mlflow-worker-sigkill",
              "evidence": "e", "duration": None, "time": stamp}
    audit.write_text(json.dumps({**common, "kind": "finding", "action": "remediate", "result": "started"}) + "\n"
                     + json.dumps({**common, "kind": "action", "action": "remediate", "result": "verified"}) + "\n"
                     + '{"kind": "finding", "host": "h1", "resu')
    ran: list = []
    monkeypatch.setattr(Program, "start", lambda self, decision: ran.append(decision))
    out = io.StringIO()
    program = Program("inv.py", [WatchHost("h1", True, {"mlflow": "q-mlflow"})], str(audit), out=out,
                      settings=Settings(grace=0))
    program.handle_line("h1", "log", "q-mlflow", SIGKILL.format(1))
    program.write_audit()
    program.audit.close()
    assert ran == []
    records = [json.loads(line) for line in audit.read_text().splitlines()[3:]]
    assert [(r["kind"], r["result"]) for r in records] == [("resume", "resumed"), ("finding", "throttled")]
    assert "fix_mlflow:q-mlflow" not in out.getvalue() and "-> throttled" in out.getvalue()


def test_a_stream_stopped_while_its_process_starts_ends_it(tmp_path, monkeypatch):
    """stop() between the process's start and the stream holding it (seen in a suite run: the
    pid file was written before Popen returned) saw no process to end; a quiet command then held
    the stream's thread and lived on. Here stop() runs exactly there."""
    import tasks.watch.streams as streams

    real_popen = subprocess.Popen
    holder: dict = {}

    def popen_then_stop(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        holder["pid"] = proc.pid
        holder["stream"].stop()
        return proc

    monkeypatch.setattr(streams.subprocess, "Popen", popen_then_stop)
    stream = Stream(WatchHost("h1", True, {}), "log", "c", "exec sleep 600", lambda *a: None,
                    ssh=None)  # type: ignore[arg-type]
    holder["stream"] = stream
    stream.start()
    stream.join(5)
    assert not stream.is_alive()
    time.sleep(0.2)
    pid = holder["pid"]
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
