"""Long-lived line streams from a host: ``docker events`` and ``docker logs -f`` of its containers.

`@local`: a subprocess per stream, in its own process group. SSH hosts: one paramiko connection
per host (the inventory's ssh_hostname/port/user/key and known hosts) and a channel per stream.
A stream that ends or fails is opened again with backoff (1 s doubling to 30 s, back to 1 s after
a stream lived a minute); the other streams and hosts are not affected. It resumes where it left
off: the first open follows from the host's "now", a reopen from the time of the last line or event
it delivered (``--since``), skipping what it already delivered, so nothing written while a
connection was down is lost. A stream that has not delivered a line yet resumes from the host's
time of its first open (each open first prints the host's clock, ``ORIGIN``, which is not
delivered): a container recreated before its first line (a backend that prints its watchfiles
error as it starts) is not missed.
Each open that succeeds is told (kind "opened"), so the program can say when a host is back.
:meth:`Stream.stop` ends it, and its process or channel, for good.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.core.watch import EVENTS
from tasks.watch.hosts import WatchHost

# (host, kind "log"|"event"|"status"|"opened", container, line)
Emit = Callable[[str, str, str, str], None]


NOW = '"$(date +%s)"'  # the host's own clock, as --since takes it
ORIGIN = "@quant-watch-origin "  # the first line of each open: the host's clock, seconds.nanoseconds


def log_mark(line: str) -> str | None:
    """A ``docker logs --timestamps`` line's time as a sortable key and a --since value:
    RFC 3339 UTC with nine fraction digits (docker trims trailing zeros)."""
    stamp = line.split(" ", 1)[0]
    if len(stamp) < 20 or stamp[10] != "T" or not stamp.endswith("Z"):
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    if not fraction.isdigit() and fraction:
        return None
    return f"{whole}.{fraction[:9].ljust(9, '0')}Z"


def event_mark(line: str) -> str | None:
    """A ``docker events`` JSON line's time as ``seconds.nanoseconds`` (--since's form)."""
    try:
        nano = int(json.loads(line).get("timeNano"))
    except (ValueError, TypeError, AttributeError):
        return None
    return f"{nano // 10**9}.{nano % 10**9:09d}"  # ten digits of seconds until 2286


def events_command(containers: list[str], since: str = NOW) -> str:
    filters = ["--filter type=container"] + [f"--filter event={e}" for e in EVENTS]
    for name in containers:
        filters += [
            f"--filter container={shlex.quote(name)}",
            f"--filter container={shlex.quote(name + '-previous')}",
        ]
    return f"exec docker events --since {since} --format '{{{{json .}}}}' " + " ".join(filters)


def logs_command(container: str, since: str = NOW) -> str:
    """The container's log from ``since`` (default: the host's now; lines before are not ours)."""
    return f"exec docker logs -f --timestamps --since {since} {shlex.quote(container)} 2>&1"


class SSHPool:
    """One paramiko connection per SSH host, opened on demand, reopened after it drops. A lock
    per host: a host that does not answer (a connect waits up to its timeout) holds up only its
    own streams, never another host's."""

    def __init__(self) -> None:
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}

    def _host_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(name, threading.Lock())

    def channel(self, host: WatchHost, command: str):
        import paramiko

        with self._host_lock(host.name):
            client = self._clients.get(host.name)
            transport = client.get_transport() if client is not None else None  # type: ignore[attr-defined]
            if transport is None or not transport.is_active():
                client = paramiko.SSHClient()
                if host.ssh.get("known_hosts"):
                    client.load_host_keys(host.ssh["known_hosts"])
                else:
                    client.load_system_host_keys()
                if not host.ssh.get("strict", True):
                    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
                client.connect(
                    host.ssh["hostname"],
                    port=host.ssh["port"],
                    username=host.ssh.get("username"),
                    key_filename=host.ssh.get("key_filename"),
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=10,
                    banner_timeout=10,
                    auth_timeout=10,
                )
                transport = client.get_transport()
                assert transport is not None
                transport.set_keepalive(10)
                with self._lock:
                    self._clients[host.name] = client
        assert transport is not None
        chan = transport.open_session()
        # A pty: when the channel closes, sshd hangs the session up and the remote command gets
        # SIGHUP (without one, `docker logs -f` would live on until it next writes a line).
        chan.get_pty(width=500)
        chan.exec_command(command)
        return chan

    def close(self) -> None:
        with self._lock:
            for client in list(self._clients.values()):
                try:
                    client.close()  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - closing on the way out
                    pass
            self._clients.clear()


class Stream(threading.Thread):
    """One command's lines on one host, reopened with backoff until stopped."""

    REOPEN_DELAY = 1.0  # seconds before the first reopen; doubled on each quick failure...
    REOPEN_DELAY_MAX = 30.0  # ...up to this; back to the first after a stream that lasted a minute

    def __init__(
        self,
        host: WatchHost,
        kind: str,
        container: str,
        command: str | Callable[[str], str],
        emit: Emit,
        ssh: SSHPool,
        mark: Callable[[str], str | None] | None = None,
    ):
        """``command``: a shell command, or one made from a --since value (``NOW`` or the last
        ``mark`` seen); ``mark``: a delivered line's sortable time (None: not resumable)."""
        super().__init__(name=f"watch-{host.name}-{kind}-{container}", daemon=True)
        self.host, self.kind, self.container, self.command = host, kind, container, command
        self.emit, self.ssh, self.mark = emit, ssh, mark
        self.last: str | None = None  # the last delivered line's mark
        self.origin: str | None = None  # the host's clock at the first open (ORIGIN's line)
        self._halt = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._chan: Any = None
        self.opened = 0

    def stop(self) -> None:
        self._halt.set()
        proc, chan = self._proc, self._chan
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if chan is not None:
            chan.close()

    def run(self) -> None:
        delay = self.REOPEN_DELAY
        while not self._halt.is_set():
            began = time.monotonic()
            try:
                self.opened += 1
                self._follow()
                reason = "stream ended"
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect with backoff
                reason = f"stream failed: {type(exc).__name__}: {str(exc)[:200]}"
            if self._halt.is_set():
                break
            delay = (
                self.REOPEN_DELAY if time.monotonic() - began > 60 else min(delay * 2, self.REOPEN_DELAY_MAX)
            )
            self.emit(
                self.host.name, "status", self.container, f"{self.kind} {reason}; reopening in {delay:.0f}s"
            )
            self._halt.wait(delay)

    def _deliver(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.startswith(ORIGIN) and callable(self.command):
            stamp = line[len(ORIGIN) :].strip()
            if self.origin is None and stamp.replace(".", "", 1).isdigit():
                self.origin = stamp
            return
        if self.mark is not None:
            mark = self.mark(line)
            if mark is not None:
                if self.last is not None and mark <= self.last:
                    return  # delivered before the stream was reopened
                self.last = mark
        self.emit(self.host.name, self.kind, self.container, line)

    def current_command(self) -> str:
        if callable(self.command):
            since = shlex.quote(self.last) if self.last else (self.origin or NOW)
            return f'echo "{ORIGIN}$(date +%s.%N)"; ' + self.command(since)
        return self.command

    def _follow(self) -> None:
        command = self.current_command()
        if self.host.local:
            self._proc = subprocess.Popen(
                ["sh", "-c", command],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            assert self._proc.stdout is not None
            # stop() sets the halt, then ends the process it sees: one made while it ran is ended
            # here, else a quiet stream (`docker logs -f`) would hold its thread and live on.
            if self._halt.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGTERM)
            self.emit(self.host.name, "opened", self.container, self.kind)
            try:
                for raw in self._proc.stdout:
                    if self._halt.is_set():
                        break
                    self._deliver(raw)
            finally:
                if self._proc.poll() is None:
                    try:
                        os.killpg(self._proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                self._proc.wait(timeout=10)
            return
        chan = self._chan = self.ssh.channel(self.host, command)
        if self._halt.is_set():  # stopped while it opened (as above)
            chan.close()
        self.emit(self.host.name, "opened", self.container, self.kind)
        try:
            for raw in chan.makefile("rb"):
                if self._halt.is_set():
                    break
                self._deliver(raw)
        finally:
            chan.close()


def host_streams(host: WatchHost, emit: Emit, ssh: SSHPool) -> list[Stream]:
    """The host's streams: its container events, and each catalog container's log."""
    names = sorted(set(host.containers.values()))
    streams = [Stream(host, "event", "*", functools.partial(events_command, names), emit, ssh, event_mark)]
    streams += [
        Stream(host, "log", name, functools.partial(logs_command, name), emit, ssh, log_mark)
        for name in names
    ]
    return streams
