"""
The watcher program behind ``scripts/watch INVENTORY [--dry] [--audit PATH]``.

Streams every host's container events and logs (tasks/watch/streams.py), feeds each line to the
pure state machine (tasks/core/watch.py) on the main thread, and runs what it decides as a pyinfra
subprocess limited to that host and that finding::

    QUANT_REMEDIATE_ONLY=<remediation>:<target> pyinfra -y [--group-data DIR] INVENTORY \
        deploys/remediate.py --limit HOST

(deploys/remediate.py in forced mode: only that remediation, e.g. db_users for the one role the
line named, never the host's other roles; it verifies its change, stamps the host's last-run
record, and exits non-zero when it could not: that is the result).
A host whose SSH connection fails is audited "disconnected" once, its streams reconnect with
backoff, and it is audited "reconnected" when one opens again; the other hosts carry on.
Every finding and action is a JSON line in the audit file and a one-line summary on the console;
each run's full output is kept beside the audit (``<audit>.runs/``, 0600). A watcher started on
an audit file an earlier one wrote (its supervisor restarted it) carries that one's throttle
windows and breakers over from it (:meth:`tasks.core.watch.Watcher.resume`).
``--dry`` runs nothing and audits each decision as "dry-run". SIGTERM/SIGINT stop every stream and
every remediation child (its process group: TERM, then KILL after 20 s), then exit.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core.private_file import write_private_text
from tasks.core.watch import Decision, Settings, Watcher, audit_line, summary_line
from tasks.watch.hosts import WatchHost, load_hosts
from tasks.watch.streams import SSHPool, Stream, host_streams

REPO = Path(__file__).resolve().parents[2]
REMEDIATE = REPO / "deploys" / "remediate.py"
ONLY_ENV = "QUANT_REMEDIATE_ONLY"  # tasks.operations.remediate.ONLY_ENV (not imported: pyinfra-free here)
PYINFRA = Path(sys.executable).parent / "pyinfra"


def remediation_command(inventory: str, decision: Decision, group_data: list[str] | None = None) -> list[str]:
    """The pyinfra command that runs ``decision``'s remediation on its host only (with
    :func:`remediation_env`)."""
    folders = [arg for folder in group_data or [] for arg in ("--group-data", folder)]
    return [str(PYINFRA), "-y", *folders, inventory, str(REMEDIATE), "--limit", decision.host]


def remediation_env(decision: Decision, environ=None) -> dict[str, str]:
    """The run's environment: the watcher's own, with ``QUANT_REMEDIATE_ONLY`` naming the finding."""
    return {**(os.environ if environ is None else environ), ONLY_ENV: decision.key}


def read_audit(path: str) -> Iterator[dict]:
    """The audit file's records, oldest first; nothing when there is no file yet. A line that is
    not a JSON object (one cut short by a crash) is skipped."""
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _ends_a_line(path: str) -> bool:
    """Whether the file is empty or ends with a newline."""
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


class Program:
    def __init__(
        self,
        inventory: str,
        hosts: list[WatchHost],
        audit_path: str | None,
        dry: bool = False,
        group_data: list[str] | None = None,
        settings: Settings | None = None,
        out=sys.stdout,
    ):
        self.inventory, self.hosts, self.dry, self.group_data, self.out = (
            inventory,
            hosts,
            dry,
            group_data,
            out,
        )
        self.by_name = {h.name: h for h in hosts}
        # each host's own catalog (its remediate.catalog, else the packaged one), read once each
        by_path: dict[str | None, tuple] = {}
        for h in hosts:
            if h.catalog_path not in by_path:
                by_path[h.catalog_path] = h.catalog
        self.watcher = Watcher(
            next(iter(by_path.values()), ()),
            time.time,
            settings or Settings(),
            configured_roles={h.name: h.db_roles for h in hosts},
            catalogs={h.name: by_path[h.catalog_path] for h in hosts},
        )
        if audit_path:  # an earlier watcher's throttle and breakers (this one restarts mid-incident)
            self.watcher.resume(read_audit(audit_path))
        self.audit = open(audit_path, "a", encoding="utf-8") if audit_path else None  # noqa: SIM115
        if self.audit and audit_path and not _ends_a_line(audit_path):
            self.audit.write("\n")  # the line a dead watcher cut short stays alone, never joined to ours
        # each remediation's full pyinfra output, beside the audit: <audit>.runs/<time>-<host>-<key>.log
        self.runs_dir = Path(f"{audit_path}.runs") if audit_path else None
        self.inbox: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.ssh = SSHPool()
        self.streams: list[Stream] = []
        self.children: dict[int, subprocess.Popen] = {}
        self.workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- output ----------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def write_audit(self) -> None:
        for record in self.watcher.drain_audit():
            if self.audit:
                self.audit.write(audit_line(record) + "\n")
                self.audit.flush()
            self.say(summary_line(record))

    # -- streams in ------------------------------------------------------------------------------

    def emit(self, host: str, kind: str, container: str, line: str) -> None:
        self.inbox.put(("line", host, kind, container, line))

    def handle_line(self, host_name: str, kind: str, container: str, line: str) -> None:
        host = self.by_name[host_name]
        if kind == "opened":
            self.watcher.host_up(host_name)
            return
        if kind == "status":
            self.say(f"[{host_name}] {container}: {line}")
            if not host.local and " stream failed: " in line:
                self.watcher.host_down(
                    host_name, line.split(" stream failed: ", 1)[1].rsplit("; reopening", 1)[0]
                )
            return
        decision = None
        if kind == "log":
            role = host.role_of(container)
            if role:
                decision = self.watcher.feed_log(host_name, role, container, line)
        elif kind == "event":
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                return
            name = ((event.get("Actor") or {}).get("Attributes") or {}).get("name", "")
            role = host.role_of(name)
            if role:
                decision = self.watcher.feed_event(host_name, role, event)
        if decision:
            self.start(decision)

    # -- remediations out ------------------------------------------------------------------------

    def start(self, decision: Decision) -> None:
        if self.dry:
            self.watcher.finished(decision, ok=True, detail="--dry: nothing run", result="dry-run")
            return
        worker = threading.Thread(
            target=self._run, args=(decision,), name=f"remediate-{decision.key}", daemon=True
        )
        self.workers.append(worker)
        worker.start()

    def _run(self, decision: Decision) -> None:
        command = remediation_command(self.inventory, decision, self.group_data)
        ok, detail = False, ""
        try:
            with self._lock:
                if self.stopping.is_set():
                    self.inbox.put(("done", decision, False, "watcher stopping: not run"))
                    return
                proc = subprocess.Popen(
                    command,
                    env=remediation_env(decision),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=REPO,
                    text=True,
                )
                self.children[proc.pid] = proc
            output, _ = proc.communicate()
            ok = proc.returncode == 0
            lines = [line for line in (output or "").splitlines() if line.strip()]
            detail = f"exit {proc.returncode}: " + " | ".join(lines[-3:])[-600:]
            if self.runs_dir is not None:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stamp}-{decision.host}-{decision.key}")
                log = write_private_text(
                    self.runs_dir / f"{name}.log",
                    f"{ONLY_ENV}={decision.key} " + " ".join(command) + "\n" + (output or ""),
                )
                detail = f"{detail} (output: {log})"
        except Exception as exc:  # noqa: BLE001 - a failed start is a failed run
            detail = f"could not run: {exc}"
        finally:
            with self._lock:
                self.children = {pid: p for pid, p in self.children.items() if p.poll() is None}
        self.inbox.put(("done", decision, ok, detail))

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        for host in self.hosts:
            self.streams += host_streams(host, self.emit, self.ssh)
        for stream in self.streams:
            stream.start()
        mode = " (dry: nothing is run)" if self.dry else ""
        self.say(f"watching {len(self.hosts)} host(s), {len(self.streams)} stream(s){mode}")
        while not self.stopping.is_set():
            try:
                item: Any = self.inbox.get(timeout=0.5)
            except queue.Empty:
                item = None
            if item and item[0] == "line":
                self.handle_line(*item[1:])
            elif item and item[0] == "done":
                _, decision, ok, detail = item
                self.watcher.finished(decision, ok, detail)
            for decision in self.watcher.ready():
                self.start(decision)
            self.write_audit()
        self.shutdown()
        return 0

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def shutdown(self) -> None:
        for stream in self.streams:
            stream.stop()
        with self._lock:
            children = list(self.children.values())
        for proc in children:
            _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
        for worker in self.workers:
            worker.join(timeout=5)
        while not self.inbox.empty():  # the runs just ended: audited as interrupted
            item = self.inbox.get_nowait()
            if item[0] == "done":
                _, decision, ok, detail = item
                self.watcher.finished(decision, ok, detail, result=None if ok else "interrupted")
        for stream in self.streams:
            stream.join(timeout=10)
        self.ssh.close()
        self.write_audit()
        if self.audit:
            self.audit.close()
        self.say("watcher stopped")


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/watch", description=__doc__.split("\n\n")[1])
    parser.add_argument("inventory")
    parser.add_argument("--dry", action="store_true", help="report what would run; run nothing")
    parser.add_argument("--audit", help="append the audit's JSON lines to this file")
    parser.add_argument(
        "--group-data", action="append", help="group data folder (default: <inventory dir>/group_data)"
    )
    parser.add_argument("--max-concurrent", type=int, default=Settings.max_concurrent)
    parser.add_argument(
        "--breaker", type=int, default=Settings.breaker_failures, help="failures that open the breaker"
    )
    parser.add_argument(
        "--grace", type=float, default=Settings.grace, help="seconds after a run that are its own"
    )
    parser.add_argument("--retry-delay", type=float, default=Settings.retry_delay)
    args = parser.parse_args(argv)
    hosts = load_hosts(args.inventory, args.group_data)
    settings = Settings(args.max_concurrent, args.breaker, args.grace, args.retry_delay, dry=args.dry)
    program = Program(args.inventory, hosts, args.audit, args.dry, args.group_data, settings)
    signal.signal(signal.SIGTERM, program.stop)
    signal.signal(signal.SIGINT, program.stop)
    return program.run()


if __name__ == "__main__":
    sys.exit(main())
