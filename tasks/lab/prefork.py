"""pyinfra runs forked from a warm process that has already imported pyinfra and this project's
`tasks`, for the test suite's few hundred runs.

Why: on this 2-core machine a pyinfra run of a deploy here costs about 1.3 s of CPU, 1.1 s of it
imports (pyinfra's CLI, gevent, paramiko, click, jinja2, then the settings models), and the suite
is CPU-bound. A forked run is the same CLI: `pyinfra_cli.main.main`, which the `pyinfra` script
calls, with the same argv, environment and working directory, its stdout and stderr in files; it
only skips the imports. Atexit hooks run at its end as at a normal exit (the recap prints from one).

The warm process (`python -m tasks.lab.prefork`) imports `pyinfra_cli` first, as the script does,
so gevent patches the standard library before anything else imports it, then every module of
`tasks` outside the lab. It reads one request per line on stdin (JSON: argv, env, cwd, stdout and
stderr paths), forks, answers the child's pid, waits for it and answers its exit code. One run at
a time: `Prefork.run` returns None while one is under way (runs made from threads), and the caller
runs a plain subprocess instead. `QUANT_TEST_PREFORK=0` turns it off.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import pkgutil
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

SWITCH_ENV = "QUANT_TEST_PREFORK"


def _preload() -> None:
    import pyinfra_cli.main  # noqa: F401  first: gevent's monkey patching, as the script does

    import tasks

    for module in pkgutil.walk_packages(tasks.__path__, "tasks."):
        if not module.name.startswith("tasks.lab"):
            importlib.import_module(module.name)
    for name in ("pyinfra.connectors.local", "pyinfra.connectors.ssh", "pyinfra.connectors.docker"):
        importlib.import_module(name)


def _exit_code(code: object) -> int:
    """What the interpreter would exit with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(request: dict, channel: int) -> None:
    """Run the CLI as the request says, then leave without returning into the server loop."""
    code = 1
    try:
        os.close(channel)
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_TRUNC),
        ):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        from pyinfra_cli.main import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        traceback.print_exc()  # setting the run up failed: said on its stderr (else the warm process's log)
    finally:
        os._exit(code)


def serve() -> None:
    """The warm process's loop (see the module docstring)."""
    _preload()
    import gevent.os
    from gevent import monkey

    waitpid = monkey.get_original("os", "waitpid")
    # Answers go out on a copy of stdout; stdout itself points at stderr, so that nothing
    # printed here can garble them.
    channel = os.dup(1)
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while line := requests.readline():
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = gevent.os.fork_gevent()
        if pid == 0:
            _child(request, channel)
        os.write(channel, json.dumps({"pid": pid}).encode() + b"\n")
        _, status = waitpid(pid, 0)
        os.write(channel, json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


class Prefork:
    """The client: one warm process per Python process that uses it, started on first use."""

    def __init__(self, python: Path, repo: Path) -> None:
        self.python, self.repo = python, repo
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None
        self.pending = b""
        self.registered = False

    @staticmethod
    def enabled() -> bool:
        return os.environ.get(SWITCH_ENV, "1") != "0"

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            fd, log = tempfile.mkstemp(prefix="quant-prefork-", suffix=".log")
            self.log = Path(log)
            self.proc = subprocess.Popen(
                [str(self.python), "-m", "tasks.lab.prefork"],
                cwd=self.repo,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fd,
            )
            os.close(fd)
            self.pending = b""
            if not self.registered:
                atexit.register(self.close)
                self.registered = True
        return self.proc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not None:
            self.log.unlink(missing_ok=True)

    def _answer(self, deadline: float | None) -> dict | None:
        """The next answer line, or None when ``deadline`` passes first."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                problem = self.log.read_text()[-2000:] if self.log else ""
                raise RuntimeError(f"the warm pyinfra process ended: {problem}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(
        self, argv: list[str], env: dict[str, str], cwd: Path, timeout: float
    ) -> subprocess.CompletedProcess | None:
        """`subprocess.run(argv, capture_output=True, text=True, ...)`, forked; None when busy."""
        if not self.lock.acquire(blocking=False):
            return None
        pid, answered = None, False
        try:
            proc = self._start()
            assert proc.stdin is not None
            with tempfile.TemporaryDirectory(prefix="quant-prefork-") as folder:
                out, err = Path(folder, "stdout"), Path(folder, "stderr")
                out.touch()
                err.touch()
                request = {"argv": argv, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                started = self._answer(time.monotonic() + 60)
                if started is None:
                    raise RuntimeError("the warm pyinfra process did not fork within 60 s")
                pid = started["pid"]
                done = self._answer(time.monotonic() + timeout)
                if done is None:
                    os.kill(pid, signal.SIGKILL)
                    self._answer(None)
                    answered = True
                    raise subprocess.TimeoutExpired(
                        argv, timeout, out.read_text(errors="replace"), err.read_text(errors="replace")
                    )
                answered = True
                return subprocess.CompletedProcess(
                    argv, done["returncode"], out.read_text(errors="replace"), err.read_text(errors="replace")
                )
        finally:
            if not answered:
                self._abandon(pid)
            self.lock.release()

    def _abandon(self, pid: int | None) -> None:
        """A run left before its last answer (an error, a test's timeout, ^C): its answers would
        come out of step with the next request's, so the run and the warm process both go (as
        `subprocess.run` kills its child); the next run starts a new warm process."""
        for target in (pid, self.proc.pid if self.proc is not None else None):
            if target is not None:
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            self.proc.wait()
            self.proc = None
        if self.log is not None:
            self.log.unlink(missing_ok=True)


if __name__ == "__main__":
    serve()
