"""Every cgroup v1 controller mounted where this machine's engine looks, before a machine-like
test host starts.

A machine-like host (tests/machines.py: systemd as PID 1 in this machine's cgroup namespace, with
/sys/fs/cgroup bound read-write) mounts every controller it finds unmounted (hugetlb, perf_event,
net_cls,net_prio here). That makes new hierarchies that every process joins but that the engine's
mount namespace does not show; containerd then cannot load any container's cgroups: `docker stats`
reads `0B / 0B` and OOM events are lost, for every container, until the machine restarts (seen
here on 2026-12-02). Mounted here first, systemd finds them mounted and uses them.

Nothing to do on cgroup v2 (one hierarchy) or when every enabled controller is mounted already.

Such a host's own dockerd makes its containers' cgroups in those shared hierarchies
(`<controller>/docker/<id>`) and dies with the host before removing them: removing a host removes
them after it (:func:`remove_container_cgroups`), else they pile up, empty, across runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# How systemd co-mounts controllers when it makes their hierarchy itself.
JOINED = (("cpu", "cpuacct"), ("net_cls", "net_prio"))


def enabled_hierarchies(proc_cgroups: str) -> dict[int, list[str]]:
    """From /proc/cgroups: hierarchy id -> its enabled controllers (id 0: on no hierarchy yet)."""
    found: dict[int, list[str]] = {}
    for line in proc_cgroups.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, hierarchy, _count, enabled = line.split()[:4]
        if enabled == "1":
            found.setdefault(int(hierarchy), []).append(name)
    return found


def mounted_controllers(mountinfo: str) -> set[str]:
    """Controllers of the cgroup v1 mounts in a /proc/<pid>/mountinfo."""
    mounted: set[str] = set()
    for line in mountinfo.splitlines():
        _, _, after = line.partition(" - ")
        fields = after.split()
        if len(fields) >= 3 and fields[0] == "cgroup":
            mounted.update(option for option in fields[2].split(",") if option not in ("rw", "ro"))
    return mounted


def missing_mounts(proc_cgroups: str, mountinfo: str) -> list[tuple[str, ...]]:
    """The controller sets to mount, each as one hierarchy: an existing hierarchy with exactly its
    controllers (a mount must name them all), an unmounted controller joined as systemd would."""
    mounted = mounted_controllers(mountinfo)
    hierarchies = enabled_hierarchies(proc_cgroups)
    wanted: list[tuple[str, ...]] = []
    for hierarchy, names in sorted(hierarchies.items()):
        if hierarchy != 0 and not mounted.intersection(names):
            wanted.append(tuple(sorted(names)))
    loose = [name for name in hierarchies.get(0, []) if name not in mounted]
    for group in JOINED:
        if all(name in loose for name in group):
            wanted.append(group)
            loose = [name for name in loose if name not in group]
    wanted.extend((name,) for name in loose)
    return wanted


def mount_missing_controllers(log=print) -> list[str]:
    """Mount each enabled v1 controller that is not mounted under /sys/fs/cgroup (as root; the
    tmpfs there is made writable for the mkdir and read-only again after). Returns the mounts made."""
    if (CGROUP_ROOT / "cgroup.controllers").exists() or os.geteuid() != 0:
        return []
    wanted = missing_mounts(Path("/proc/cgroups").read_text(), Path("/proc/self/mountinfo").read_text())
    made: list[str] = []
    for names in wanted:
        target = CGROUP_ROOT / ",".join(names)
        if not target.is_dir():
            _writable_root(lambda target=target: target.mkdir())
        options = ",".join(names)
        subprocess.run(["mount", "-t", "cgroup", "-o", options, "cgroup", str(target)], check=True)
        made.append(options)
    if made:
        log(f"lab: mounted cgroup controllers {', '.join(made)} (machine-like hosts would make them unseen)")
    return made


def _writable_root(change) -> None:
    """Run ``change`` with the tmpfs at /sys/fs/cgroup writable, then put back both its read-only
    superblock and its mount's own flag as they were (here: superblock ro, mount rw)."""
    mount_ro, super_ro = _read_only_flags(CGROUP_ROOT)
    if mount_ro or super_ro:
        subprocess.run(["mount", "-o", "remount,rw", str(CGROUP_ROOT)], check=True)
    try:
        change()
    finally:
        if super_ro:
            subprocess.run(["mount", "-o", "remount,ro", str(CGROUP_ROOT)], check=True)
        if super_ro and not mount_ro:
            subprocess.run(["mount", "-o", "remount,bind,rw", str(CGROUP_ROOT)], check=True)


def _read_only_flags(path: Path) -> tuple[bool, bool]:
    """(the mount's own flag is ro, the filesystem's superblock is ro) for the mount at ``path``."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, supers = before.split(), after.split()
        if len(fields) > 5 and fields[4] == str(path):
            super_options = supers[2].split(",") if len(supers) > 2 else []
            return "ro" in fields[5].split(","), "ro" in super_options
    return False, False


def remove_container_cgroups(ids: Iterable[str], root: Path = CGROUP_ROOT, wait: float = 3.0) -> int:
    """Remove ``<controller>/docker/<id>`` under ``root`` for each container id given, once empty
    (rmdir fails on a cgroup with a process or a child: a live container's stays). Its processes
    may still be exiting: tried again for up to ``wait`` seconds. Returns how many were removed."""
    ids = [i for i in ids if i and "/" not in i and i not in (".", "..")]
    if not ids or not root.is_dir():
        return 0
    left = [
        folder / "docker" / i
        for folder in root.iterdir()
        if folder.is_dir() and not folder.is_symlink()
        for i in ids
        if (folder / "docker" / i).is_dir()
    ]
    removed, deadline = 0, time.monotonic() + wait
    while left:
        busy = []
        for path in left:
            try:
                path.rmdir()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(path)
        if not busy or time.monotonic() >= deadline:
            break
        left = busy
        time.sleep(0.2)
    return removed
