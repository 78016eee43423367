"""Which cgroup v1 controllers the lab mounts before a machine-like host starts, read from
/proc/cgroups and mountinfo texts as this machine had them, and which cgroups it removes after one
(tasks/lab/cgroups.py)."""
from tasks.lab.cgroups import missing_mounts, mounted_controllers, remove_container_cgroups

PROC_FRESH = """#subsys_name	hierarchy	num_cgroups	enabled
cpuset	3	19	1
cpu	1	19	1
cpuacct	2	19	1
blkio	7	19	1
memory	4	978	1
devices	5	19	1
freezer	6	19	1
net_cls	0	1	1
perf_event	0	1	1
net_prio	0	1	1
hugetlb	0	1	1
pids	8	19	1
rdma	0	1	0
"""
MOUNTINFO = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs ro,size=4096k,nr_inodes=1024,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_mounted_controllers_are_read_from_v1_mounts_only():
    assert mounted_controllers(MOUNTINFO) == {
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "name=systemd"}


def test_a_fresh_machine_gets_the_unmounted_controllers_joined_as_systemd_joins_them():
    assert missing_mounts(PROC_FRESH, MOUNTINFO) == [("net_cls", "net_prio"), ("perf_event",), ("hugetlb",)]


def test_hierarchies_a_host_already_made_are_mounted_with_all_their_controllers():
    made = (PROC_FRESH.replace("net_cls\t0", "net_cls\t28").replace("net_prio\t0", "net_prio\t28")
            .replace("hugetlb\t0", "hugetlb\t30"))
    assert missing_mounts(made, MOUNTINFO) == [("net_cls", "net_prio"), ("hugetlb",), ("perf_event",)]


def test_nothing_to_mount_when_every_enabled_controller_is_mounted():
    mounted = MOUNTINFO + "".join(
        f"4{i} 31 0:4{i} / /sys/fs/cgroup/{name} rw,relatime - cgroup cgroup rw,{name}\n"
        for i, name in enumerate(("net_cls,net_prio", "hugetlb", "perf_event")))
    assert missing_mounts(PROC_FRESH, mounted) == []


def test_a_removed_hosts_container_cgroups_go_once_empty_and_nothing_else(tmp_path):
    gone, busy, other = "a" * 64, "b" * 64, "c" * 64
    for controller in ("memory", "pids", "cpu,cpuacct"):
        for cid in (gone, busy, other):
            (tmp_path / controller / "docker" / cid).mkdir(parents=True)
    (tmp_path / "cpu").symlink_to(tmp_path / "cpu,cpuacct")
    # A cgroup with a child (or a process) cannot be removed: rmdir fails, as a live one's would.
    (tmp_path / "memory" / "docker" / busy / "child").mkdir()
    removed = remove_container_cgroups([gone, busy, "", ".."], root=tmp_path, wait=0.3)
    assert removed == 5  # gone in 3 controllers, busy in the 2 where it is empty
    assert not any((tmp_path / c / "docker" / gone).exists() for c in ("memory", "pids", "cpu,cpuacct"))
    assert (tmp_path / "memory" / "docker" / busy / "child").is_dir()
    assert all((tmp_path / c / "docker" / other).is_dir() for c in ("memory", "pids", "cpu,cpuacct"))
    assert (tmp_path / "memory" / "docker").is_dir()
