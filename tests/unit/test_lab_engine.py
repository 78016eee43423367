"""Engine detection: use a running engine, start dockerd as root, or say clearly what to do.

None of these needs a Docker engine: DOCKER_HOST points at a socket path that does not exist.
"""
import os
import signal
import sys
import textwrap
import time

import pytest

from tasks.lab import engine
from tasks.lab.engine import EngineError, ensure_engine


@pytest.fixture
def no_engine(monkeypatch, tmp_path):
    """DOCKER_HOST names a socket nobody listens on; nothing else points the SDK elsewhere."""
    socket_path = tmp_path / "nothing-here" / "docker.sock"
    assert not socket_path.exists()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
    for var in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(engine, "DOCKERD_LOG", tmp_path / "dockerd.log")
    return socket_path


@pytest.fixture
def no_popen(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"ensure_engine must not start anything here: {args!r}")
    monkeypatch.setattr(engine.subprocess, "Popen", refuse)


def test_no_engine_is_detected(no_engine):
    assert engine._ping(timeout=1) is None


def test_running_engine_is_used_as_is(monkeypatch, no_popen):
    client = object()
    monkeypatch.setattr(engine, "_ping", lambda timeout=5.0: client)
    monkeypatch.setattr(engine.shutil, "which", lambda name: pytest.fail("must not look for dockerd"))
    assert ensure_engine() is client


def test_without_engine_or_dockerd_the_error_names_the_package(no_engine, monkeypatch, no_popen):
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    with pytest.raises(EngineError) as excinfo:
        ensure_engine(dockerd=None, wait_seconds=1)
    message = str(excinfo.value)
    assert "apt-get install docker.io" in message
    assert str(no_engine) in message  # says which engine address it tried
    # EngineError is a SystemExit: the CLI exits with the message, not a traceback.
    assert isinstance(excinfo.value, SystemExit)
    assert not engine.DOCKERD_LOG.exists()


def test_not_root_with_dockerd_says_to_run_as_root_or_start_the_engine(no_engine, monkeypatch, no_popen):
    monkeypatch.setattr(engine.shutil, "which", lambda name: "/usr/sbin/dockerd")
    monkeypatch.setattr(engine.os, "geteuid", lambda: 1000)
    with pytest.raises(EngineError) as excinfo:
        ensure_engine(wait_seconds=1)
    message = str(excinfo.value)
    assert "/usr/sbin/dockerd" in message
    assert "root" in message
    assert "systemctl start docker" in message
    assert not engine.DOCKERD_LOG.exists()


# A stand-in for dockerd: answers the two API calls the SDK makes (/version, /_ping) on the unix
# socket named by DOCKER_HOST, which it inherits from ensure_engine's process.
FAKE_DOCKERD = textwrap.dedent("""\
    #!{python}
    import http.server, os, socketserver, sys, threading
    path = os.environ["DOCKER_HOST"][len("unix://"):]
    with open(os.environ["FAKE_DOCKERD_PID"], "w") as out:
        out.write(str(os.getpid()))
    print("fake dockerd listening on", path, flush=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def address_string(self):
            return "unix"
        def do_GET(self):
            if self.path.endswith("/_ping"):
                body, kind = b"OK", "text/plain"
            elif self.path.endswith("/version"):
                body, kind = b'{{"ApiVersion": "1.43", "Version": "fake"}}', "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_HEAD = do_GET

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    os.makedirs(os.path.dirname(path), exist_ok=True)
    server = Server(path, Handler)
    threading.Timer(60, server.shutdown).start()  # never outlive the test for long
    server.serve_forever()
""")


def test_as_root_dockerd_is_started_and_waited_for(no_engine, monkeypatch, tmp_path):
    fake = tmp_path / "dockerd"
    fake.write_text(FAKE_DOCKERD.format(python=sys.executable))
    fake.chmod(0o755)
    pid_file = tmp_path / "dockerd.pid"
    monkeypatch.setenv("FAKE_DOCKERD_PID", str(pid_file))
    monkeypatch.setattr(engine.os, "geteuid", lambda: 0)
    lines = []
    try:
        client = ensure_engine(wait_seconds=30, dockerd=str(fake), log=lines.append)
        assert client.ping() is True
    finally:
        for _ in range(50):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        if pid_file.exists() and pid_file.read_text():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert any(str(fake) in line and str(engine.DOCKERD_LOG) in line for line in lines), lines
    assert any("engine up after" in line for line in lines), lines
    # dockerd's output goes to its own log file.
    assert "fake dockerd listening on" in engine.DOCKERD_LOG.read_text()


def test_dockerd_that_never_answers_gives_up_naming_its_log(no_engine, monkeypatch, tmp_path):
    silent = tmp_path / "dockerd"
    silent.write_text("#!/bin/sh\necho 'failed to start daemon: pretend'\nexit 1\n")
    silent.chmod(0o755)
    monkeypatch.setattr(engine.os, "geteuid", lambda: 0)
    with pytest.raises(EngineError) as excinfo:
        ensure_engine(wait_seconds=1.5, dockerd=str(silent), log=lambda line: None)
    assert str(engine.DOCKERD_LOG) in str(excinfo.value)
    assert "did not answer" in str(excinfo.value)
    assert "failed to start daemon: pretend" in engine.DOCKERD_LOG.read_text()
