"""bench/'s pure arithmetic: phases from time-stamped progress lines, the spread of repeated runs,
the fleet summary and verdicts, and the OOM/SIGKILL times parsed for the memory plot. Loaded from
bench/ by path (bench is scripts, not a package; it imports nothing from tests)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stats = _load("fleet_stats")
events = _load("events")
cgroup = _load("cgroup")


def test_pyinfra_phases_from_its_log_lines():
    lines = [(0.41, "--> Loading config..."), (0.52, "--> Loading inventory..."),
             (0.60, "--> Connecting to hosts..."),
             (0.95, "\x1b[1m[bench-h1] \x1b[32mConnected\x1b[0m"), (1.10, "[bench-h0] Connected"),
             (1.40, "[bench-h0] noop: container qtbn-fleet-0 matches the settings"),
             (1.55, "--> Beginning operation run..."), (1.58, "--> Results:")]
    phases = stats.pyinfra_phases(lines, total=1.70)
    assert phases == {"startup": 0.6, "connect": 0.5, "facts": 0.45, "execute": 0.03, "finish": 0.12,
                      "first_connected": 0.35}


def test_pyinfra_phases_of_a_run_that_never_connected_are_unknown():
    phases = stats.pyinfra_phases([(0.5, "--> Connecting to hosts..."), (3.0, "[h0] Could not connect")], 3.2)
    assert phases["startup"] == 0.5
    assert phases["connect"] is None and phases["facts"] is None and phases["finish"] is None


def test_ansible_phases_from_its_stdout():
    lines = [(1.20, ""), (1.25, "PLAY [Fix the MLflow tracking server] ****"), (1.30, ""),
             (1.31, "TASK [MLflow container] ****"), (2.10, "ok: [bench-h1]"), (2.40, "changed: [bench-h0]"),
             (2.45, "TASK [MLflow answers /health] ****"), (2.60, "skipping: [bench-h1]"), (2.70, "ok: [bench-h0]"),
             (2.90, "PLAY RECAP ****"), (2.91, "bench-h0 : ok=3 changed=1 unreachable=0 failed=0")]
    phases = stats.ansible_phases(lines, total=3.0)
    assert phases == {"startup": 1.25, "connect": None, "facts": 1.2, "execute": 0.45, "finish": 0.1,
                      "first_connected": 0.79}


def test_spread_quartiles_and_single_values():
    assert stats.spread([3.0, 1.0, 2.0, 4.0, 5.0]) == {"min": 1.0, "q1": 2.0, "median": 3.0, "q3": 4.0,
                                                       "max": 5.0, "n": 5}
    assert stats.spread([None, 2.5]) == {"min": 2.5, "q1": 2.5, "median": 2.5, "q3": 2.5, "max": 2.5, "n": 1}
    assert stats.spread([None]) is None


def _run(tool, n, scenario, wall, changed=0, **extra):
    return {"tool": tool, "variant": str(n), "hosts": n, "scenario": scenario, "wall_s": wall,
            "changed": changed, "returncode": 0, "failed": 0,
            "per_host": {"exec": 1.0, "sftp": 0.0, "connections": 1.0},
            "phases": {"startup": 0.5, "connect": 0.1 * n}, "cpu": {"controller": 0.3 * n}, **extra}


def _fleet(runs, sizes=(1, 50)):
    variants = [str(n) for n in sizes]
    return {"hosts": list(sizes), "variants": variants, "reps": 2, "cores": 2,
            "summary": stats.summarize(runs, variants)}


def test_summary_speedups_growth_and_verdicts():
    runs = []
    for wall_p, wall_a, wall_f, n in ((0.6, 1.2, 1.3, 1), (1.5, 9.0, 10.0, 50), (1.7, 8.0, 11.0, 50)):
        runs += [_run("pyinfra", n, "no-change", wall_p), _run("ansible", n, "no-change", wall_a),
                 _run("ansible-fresh", n, "no-change", wall_f)]
    fleet = _fleet(runs)
    s = fleet["summary"]
    assert s["no-change/pyinfra/50"]["wall_s"] == 1.6
    assert s["no-change/pyinfra/50"]["spread"]["max"] == 1.7
    assert s["speedup/no-change/ansible/50"] == round(8.5 / 1.6, 2)
    assert s["no-change/pyinfra/50"]["as_expected"] is True
    assert stats.growth(s, [1, 50]) == round(1.6 / 0.6, 2)
    rows = {target: verdict for target, _, verdict in stats.verdicts(fleet)}
    assert rows[">= 5x faster than Ansible, warm connection at 50 hosts, no change"] == "met"
    assert rows[">= 5x faster than Ansible, new connection at 50 hosts, no change"] == "met"
    assert rows["pyinfra wall time at 50 hosts <= 3x the 1-host time, no change"] == "met"
    assert rows["<= 3 remote round trips per host (no change)"] == "met"
    markdown = "\n".join(stats.markdown(fleet))
    assert "| 50 | 1.60 s (1.50-1.70) |" in markdown
    # where the time goes at 50 hosts: controller CPU 15 s over 1.6 s x 2 cores
    assert "| no-change, pyinfra fix_mlflow | 1.60 s | 0.50 s | 5.00 s |" in markdown
    assert "| 15.00 s | - | - | 469% |" in markdown


def test_a_slow_fleet_is_judged_not_met_and_a_wrong_change_count_is_flagged():
    runs = [_run("pyinfra", 1, "no-change", 0.5), _run("pyinfra", 50, "no-change", 2.0),
            _run("ansible", 50, "no-change", 6.0), _run("ansible-fresh", 50, "no-change", 12.0),
            _run("pyinfra", 50, "one-change", 5.0, changed=1),
            _run("ansible", 50, "one-change", 7.0, changed=1, repaired=False),
            _run("ansible-fresh", 50, "one-change", 8.0, changed=0)]
    fleet = _fleet(runs)
    s = fleet["summary"]
    assert s["one-change/pyinfra/50"]["as_expected"] is True
    assert s["one-change/ansible/50"]["as_expected"] is False  # not put back
    assert s["one-change/ansible-fresh/50"]["as_expected"] is False  # no change reported
    rows = {target: verdict for target, _, verdict in stats.verdicts(fleet)}
    assert rows[">= 5x faster than Ansible, warm connection at 50 hosts, no change"] == "NOT met"  # 3x
    assert rows[">= 5x faster than Ansible, new connection at 50 hosts, no change"] == "met"  # 6x
    assert rows["pyinfra wall time at 50 hosts <= 3x the 1-host time, no change"] == "NOT met"  # 4x


@pytest.mark.parametrize(("stamp", "epoch"), [
    ("2026-12-02T04:01:02.500000000Z", 1796184062.5),
    ("2026-12-02T04:01:02Z", 1796184062.0),
    ("2026-12-02T05:01:02.25+01:00", 1796184062.25),
])
def test_rfc3339_with_nanoseconds(stamp, epoch):
    assert events.rfc3339_epoch(stamp) == pytest.approx(epoch)


def test_sigkill_log_lines_are_timed():
    logs = ("2026-12-02T04:01:02.500000000Z [2026-12-02 04:01:02 +0000] [1] [ERROR] Worker (pid:9) was sent "
            "SIGKILL! Perhaps out of memory?\n"
            "2026-12-02T04:01:03.000000000Z [2026-12-02 04:01:03 +0000] [10] [INFO] Booting worker\n"
            "garbage line with SIGKILL! but no stamp\n")
    assert events.log_times(logs, "SIGKILL!") == [pytest.approx(1796184062.5)]


def test_cgroup_v1_memory_and_oom_kills(tmp_path):
    folder = tmp_path / "memory" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "memory.usage_in_bytes").write_text("314572800\n")
    (folder / "memory.stat").write_text("cache 1093632\ninactive_file 4096\ntotal_inactive_file 10485760\n")
    (folder / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert cgroup.container_cgroup("abc", root=tmp_path) == folder
    assert cgroup.container_cgroup("other", root=tmp_path) is None
    assert cgroup.memory_mib(folder) == 290.0  # 300 MiB less 10 MiB of inactive file cache
    assert cgroup.oom_kills(folder) == 3


def test_cgroup_v2_memory_and_oom_kills(tmp_path):
    folder = tmp_path / "system.slice" / "docker-abc.scope"
    folder.mkdir(parents=True)
    (folder / "memory.current").write_text("209715200\n")
    (folder / "memory.stat").write_text("anon 200000000\ninactive_file 1048576\n")
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n")
    assert cgroup.container_cgroup("abc", root=tmp_path) == folder
    assert cgroup.memory_mib(folder) == 199.0
    assert cgroup.oom_kills(folder) == 2
    (folder / "memory.current").unlink()
    (folder / "memory.stat").unlink()
    assert cgroup.memory_mib(folder) is None  # gone between two samples (a restart)
