"""Find or start the Docker engine the lab runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

DOCKERD_LOG = Path(os.environ.get("QUANTLAB_DOCKERD_LOG", "/var/log/quantlab-dockerd.log"))


class EngineError(SystemExit):
    """No usable Docker engine; the message says what to install or start."""


# The lab's calls (create, start, exec, image loads) on a loaded two-core machine: a load average
# of 14 made a container start take over 5 s, the ping's own bound.
CLIENT_TIMEOUT = 180


def _ping(timeout: float = 5.0):
    """A client for the engine when it answers a ping within ``timeout`` (its calls then get
    CLIENT_TIMEOUT each), else None."""
    try:
        docker.from_env(timeout=timeout).ping()
    except (docker.errors.DockerException, OSError):
        return None
    return docker.from_env(timeout=CLIENT_TIMEOUT)


def ensure_engine(wait_seconds: float = 60.0, dockerd: str | None = None, log=print):
    """Return a client for a running engine; start `dockerd` (as root) when none answers."""
    client = _ping()
    if client is None and Path("/var/run/docker.sock").exists():
        client = _ping(timeout=30)  # an engine that is there but slow under load: not one to start
    if client is not None:
        return client
    dockerd = dockerd or shutil.which("dockerd")
    if dockerd is None:
        raise EngineError(
            "No Docker engine answers (DOCKER_HOST=%s) and dockerd is not installed: "
            "install Debian's package with `apt-get install docker.io`, or start your engine."
            % os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        )
    if os.geteuid() != 0:
        raise EngineError(
            "No Docker engine answers and starting %s needs root: run as root, or start the engine "
            "(`sudo systemctl start docker`)." % dockerd
        )
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    log(f"lab: starting {dockerd} (log: {DOCKERD_LOG})")
    with open(DOCKERD_LOG, "ab") as out:
        subprocess.Popen(
            [dockerd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    started = time.monotonic()
    while time.monotonic() - started < wait_seconds:
        client = _ping(timeout=2)
        if client is not None:
            log(f"lab: engine up after {time.monotonic() - started:.1f}s")
            return client
        time.sleep(0.5)
    raise EngineError(f"dockerd did not answer within {wait_seconds:.0f}s; see {DOCKERD_LOG}")
