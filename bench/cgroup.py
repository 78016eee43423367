"""A container's memory and OOM kills read from its cgroup on the host, not from `docker stats`
(on 2026-12-02 Docker 20.10 answered `0B / 0B` for every container on this machine, cgroup v1,
while the cgroups themselves had the figures). Usage is counted as `docker stats` counts it: the cgroup's usage
less its inactive file cache. OOM kills: the kernel's `oom_kill` counter of the cgroup (cgroup v1
`memory.oom_control`, v2 `memory.events`), which counts a kill of any process in the container
(a gunicorn worker too), where `docker events` reported no `oom` event for 40 worker kills.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, memory.events, memory.oom_control) -> {key: value}."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def container_cgroup(container_id: str, root: Path = ROOT) -> Path | None:
    """The memory cgroup folder of a container (cgroupfs or systemd driver, cgroup v1 or v2)."""
    for candidate in (root / "memory" / "docker" / container_id,
                      root / "memory" / "system.slice" / f"docker-{container_id}.scope",
                      root / "system.slice" / f"docker-{container_id}.scope",
                      root / "docker" / container_id):
        if (candidate / "memory.usage_in_bytes").exists() or (candidate / "memory.current").exists():
            return candidate
    return None


def memory_mib(folder: Path) -> float | None:
    """Usage less inactive file cache, MiB; None when the cgroup is gone (a restart)."""
    try:
        if (folder / "memory.current").exists():  # v2
            usage = int((folder / "memory.current").read_text())
            inactive = flat_keyed((folder / "memory.stat").read_text()).get("inactive_file", 0)
        else:
            usage = int((folder / "memory.usage_in_bytes").read_text())
            stat = flat_keyed((folder / "memory.stat").read_text())
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    except (OSError, ValueError):
        return None
    return round(max(usage - inactive, 0) / 1048576, 1)


def oom_kills(folder: Path) -> int | None:
    for name in ("memory.events", "memory.oom_control"):
        try:
            return flat_keyed((folder / name).read_text()).get("oom_kill", 0)
        except OSError:
            continue
    return None
