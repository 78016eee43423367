"""scripts/watch against the real incident lab over @local: the MLflow SIGKILL signature in the
container's own log stream (a burst of a thousand lines) -> fix_mlflow runs exactly once, is
verified, and the audit has the finding and the action; --dry runs nothing; SIGTERM leaves no
stream or child behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.labkit import GROUP_DATA, REPO, lab_up, write_inventory

pytestmark = pytest.mark.lab

WATCH = REPO / "scripts" / "watch"
BURST = ('stamp=$(date -u "+%Y-%m-%d %H:%M:%S"); for i in $(seq 1000 1999); do echo "[$stamp +0000] [1] '
         '[ERROR] Worker (pid:$i) was sent SIGKILL! Perhaps out of memory?"; done > /proc/1/fd/1')


@pytest.fixture(scope="module")
def lab(request):
    return lab_up(request, "qtwt", 33000, "incident")


class Watch:
    def __init__(self, tmp_path: Path, inventory: Path, *args: str):
        self.audit = tmp_path / "audit.jsonl"
        self.console = tmp_path / "console.log"
        self.out = self.console.open("w")
        self.proc = subprocess.Popen(
            [str(WATCH), str(inventory), "--audit", str(self.audit), "--group-data", str(GROUP_DATA), *args],
            stdout=self.out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        self.wait_for(lambda: "watching 1 host(s)" in self.text(), 60, "the watcher to start")
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


def test_sigkill_burst_is_fixed_once_verified_and_audited(lab, tmp_path):
    inventory = write_inventory(tmp_path / "inventory.py", lab.prefix)
    incident = running_mlflow(lab)
    watch = Watch(tmp_path, inventory, "--grace", "20")
    try:
        burst(lab, incident)
        watch.wait_for(lambda: watch.actions("fix_mlflow"), 600, "fix_mlflow to end")
        (action,) = watch.actions("fix_mlflow")
        assert action["result"] == "verified", action
        assert action["host"] == "@local" and action["target"] == f"{lab.prefix}-mlflow"
        assert action["signature"] in ("mlflow-worker-sigkill", "mlflow-oom-killed", "mlflow-restart-loop")
        assert action["duration"] > 0 and action["attempt"] == 1
        assert action["collapsed"] >= 999  # the burst: one remediation
        run_log = Path(action["detail"].rsplit("(output: ", 1)[1].rstrip(")"))
        assert run_log.parent == tmp_path / "audit.jsonl.runs" and run_log.stat().st_mode & 0o777 == 0o600
        assert "deploys/fix_mlflow.py --limit @local" in run_log.read_text() and "Recap" in run_log.read_text()
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
