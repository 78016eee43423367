"""The fleet section's arithmetic, pure (standard library only, no I/O): where a run's wall time
went (from the time each output line arrived), the spread of repeated runs, the per-size summary,
the targets' verdicts and the summary's tables. bench/fleet.py measures; this module only counts,
so tests/unit can check it without an engine.

Phases of a run come from the tools' own progress lines, time-stamped by the bench as they arrive
(pyinfra logs to stderr, Ansible prints to stdout unbuffered):

  pyinfra  start -> "--> Connecting to hosts"       startup: interpreter, imports, inventory
           -> the last "[host] Connected"            connect: every host's SSH handshake (in parallel)
           -> "--> Beginning operation run"          facts: the deploy's code and its fact round trips
           -> "--> Results"                          execute: the changes (nothing on a no-change run)
           -> exit                                   finish: results, disconnect
  Ansible  start -> "PLAY ["                         startup
           -> the next "TASK [" after the first one  container task: connect + module + compare per host
           -> "PLAY RECAP"                           verify tasks (skipped unless the container changed)
           -> exit                                   finish
"""
from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PHASES = ("startup", "connect", "facts", "execute", "finish")
TOOLS = ("pyinfra", "ansible", "ansible-fresh")
SCENARIOS = ("no-change", "one-change")
TOOL_NAMES = {"pyinfra": "pyinfra fix_mlflow", "ansible": "Ansible, warm connection",
              "ansible-fresh": "Ansible, new connection"}


def _clean(line: str) -> str:
    return ANSI.sub("", line).strip()


def _first(lines: Sequence[tuple[float, str]], test, after: float = -1.0) -> float | None:
    return next((t for t, line in lines if t > after and test(line)), None)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def pyinfra_phases(lines: Iterable[tuple[float, str]], total: float) -> dict:
    """Phases of one pyinfra run from its (seconds since start, line) pairs; a phase whose
    markers are missing (a failed run) is None."""
    lines = [(t, _clean(text)) for t, text in lines]
    connecting = _first(lines, lambda s: s.startswith("--> Connecting to hosts"))
    beginning = _first(lines, lambda s: s.startswith("--> Beginning operation run"))
    results = _first(lines, lambda s: s.startswith("--> Results"))
    connected = [t for t, s in lines if s.endswith("] Connected") and s.startswith("[")]
    last_connected = max(connected) if connected else None
    return {
        "startup": _r(connecting),
        "connect": _r(last_connected - connecting) if connecting is not None and last_connected else None,
        "facts": _r(beginning - last_connected) if beginning is not None and last_connected else None,
        "execute": _r(results - beginning) if results is not None and beginning is not None else None,
        "finish": _r(total - results) if results is not None else None,
        "first_connected": _r(min(connected) - connecting) if connected and connecting is not None else None,
    }


HOST_DONE = re.compile(r"^(ok|changed|failed|fatal|skipping): \[")


def ansible_phases(lines: Iterable[tuple[float, str]], total: float) -> dict:
    """Phases of one ansible-playbook run (default stdout callback); Ansible opens its
    connections inside the first task, so "connect" is part of "facts" there (None)."""
    lines = [(t, _clean(text)) for t, text in lines]
    play = _first(lines, lambda s: s.startswith("PLAY ["))
    tasks = [t for t, s in lines if s.startswith("TASK [")]
    recap = _first(lines, lambda s: s.startswith("PLAY RECAP"))
    first_task_end = tasks[1] if len(tasks) > 1 else recap
    done = [t for t, s in lines if HOST_DONE.match(s) and tasks and t > tasks[0]
            and (first_task_end is None or t <= first_task_end)]
    return {
        "startup": _r(play),
        "connect": None,
        "facts": _r(first_task_end - play) if play is not None and first_task_end is not None else None,
        "execute": _r(recap - first_task_end) if recap is not None and first_task_end is not None else None,
        "finish": _r(total - recap) if recap is not None else None,
        "first_connected": _r(min(done) - tasks[0]) if done else None,
    }


def spread(values: Iterable[float | None]) -> dict | None:
    """min, first quartile, median, third quartile, max (inclusive quartiles) and n."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    if len(data) == 1:
        q1 = q3 = data[0]
    else:
        q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive")
    return {"min": round(data[0], 3), "q1": round(q1, 3), "median": round(statistics.median(data), 3),
            "q3": round(q3, 3), "max": round(data[-1], 3), "n": len(data)}


def _median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return round(statistics.median(data), 3) if data else None


def summarize(runs: list[dict], variants: Sequence[str]) -> dict:
    """Per tool, scenario and variant (a size, or "<size>/machine-shell"): the spread of the wall
    time, medians of the phases, CPU and per-host counts, and whether every run did what the
    scenario expects (no change at all / exactly one change, fixed, no failure)."""
    summary: dict = {}
    for scenario in SCENARIOS:
        for key in variants:
            for tool in TOOLS:
                mine = [r for r in runs if r["tool"] == tool and r["variant"] == key and r["scenario"] == scenario]
                if not mine:
                    continue
                wall = spread(r["wall_s"] for r in mine)
                expected = 0 if scenario == "no-change" else 1
                summary[f"{scenario}/{tool}/{key}"] = {
                    "wall_s": wall["median"] if wall else None, "spread": wall, "runs": len(mine),
                    "phases": {p: _median(r.get("phases", {}).get(p) for r in mine) for p in PHASES},
                    "cpu": {k: _median(r.get("cpu", {}).get(k) for r in mine)
                            for k in ("controller", "hosts", "engine")},
                    **{f"{k}_per_host": _median(r["per_host"].get(k) for r in mine)
                       for k in ("exec", "sftp", "connections")},
                    "as_expected": all(r["changed"] == expected and r["returncode"] == 0 and not r["failed"]
                                       and r.get("repaired", True) for r in mine),
                }
            base = summary.get(f"{scenario}/pyinfra/{key}", {}).get("wall_s")
            for tool in TOOLS[1:]:
                other = summary.get(f"{scenario}/{tool}/{key}", {}).get("wall_s")
                summary[f"speedup/{scenario}/{tool}/{key}"] = round(other / base, 2) if base and other else None
    return summary


def growth(summary: dict, sizes: Sequence[int], scenario: str = "no-change", tool: str = "pyinfra") -> float | None:
    """Wall time at the biggest size over the time at the smallest (medians)."""
    small = summary.get(f"{scenario}/{tool}/{min(sizes)}", {}).get("wall_s")
    big = summary.get(f"{scenario}/{tool}/{max(sizes)}", {}).get("wall_s")
    return round(big / small, 2) if small and big else None


def verdicts(fleet: dict) -> list[tuple[str, str, str]]:
    """The fleet's targets: >= 5x Ansible (warm and new) at the biggest size, no change; wall time
    at the biggest size <= 3x the 1-host time; <= 3 remote round trips per host, no change."""
    s, sizes = fleet["summary"], fleet["hosts"]
    big, rows = max(sizes), []
    for tool in TOOLS[1:]:
        speed = s.get(f"speedup/no-change/{tool}/{big}")
        machine = s.get(f"speedup/no-change/{tool}/{fleet.get('machine_shell_hosts')}/machine-shell")
        note = f" ({machine}x at {fleet['machine_shell_hosts']} hosts with this machine's root shell rc)" if machine else ""
        one = s.get(f"speedup/one-change/{tool}/{big}")
        rows.append((f">= 5x faster than {TOOL_NAMES[tool]} at {big} hosts, no change",
                     f"{speed}x{note}; one change: {one}x", "met" if speed and speed >= 5 else "NOT met"))
    ratio = growth(s, sizes)
    one = growth(s, sizes, "one-change")
    rows.append((f"pyinfra wall time at {big} hosts <= 3x the {min(sizes)}-host time, no change",
                 f"{ratio}x ({s.get(f'no-change/pyinfra/{big}', {}).get('wall_s')} s vs "
                 f"{s.get(f'no-change/pyinfra/{min(sizes)}', {}).get('wall_s')} s); one change: {one}x",
                 "met" if ratio and ratio <= 3 else "NOT met"))
    trips = [v["exec_per_host"] + v["sftp_per_host"] for k, v in s.items()
             if k.startswith("no-change/pyinfra/") and v.get("exec_per_host") is not None]
    if trips:
        rows.append(("<= 3 remote round trips per host (no change)", f"{max(trips):g}",
                     "met" if max(trips) <= 3 else "NOT met"))
    return rows


def _fmt(value, unit: str = " s") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def _wall(entry: dict | None) -> str:
    if not entry or not entry.get("spread"):
        return "-"
    sp = entry["spread"]
    return f"{sp['median']:.2f} s ({sp['min']:.2f}-{sp['max']:.2f})"


def markdown(fleet: dict) -> list[str]:
    """The summary's fleet section: the scaling table per scenario and where the time went at
    the biggest size."""
    s, sizes = fleet["summary"], fleet["hosts"]
    lines: list[str] = []
    for scenario, title in (("no-change", "No-change run"), ("one-change", "One-change run")):
        lines += [f"### {title} (median of {fleet['reps']} interleaved runs, min-max in brackets)", "",
                  "| hosts | pyinfra fix_mlflow | Ansible, warm connection | Ansible, new connection "
                  "| Ansible / pyinfra (warm, new) | remote commands per host: pyinfra / Ansible "
                  "| SSH logins per host: pyinfra / warm / new | all as expected |",
                  "|---|---|---|---|---|---|---|---|"]
        for key in fleet["variants"]:
            p, a, f = (s.get(f"{scenario}/{t}/{key}") for t in TOOLS)
            if not p or not a or not f:
                continue
            label = key.replace("/machine-shell", ", this machine's root shell rc")
            lines.append(
                f"| {label} | {_wall(p)} | {_wall(a)} | {_wall(f)} | "
                f"{s[f'speedup/{scenario}/ansible/{key}']}x, {s[f'speedup/{scenario}/ansible-fresh/{key}']}x | "
                f"{p['exec_per_host'] + p['sftp_per_host']:g} / {a['exec_per_host'] + a['sftp_per_host']:g} | "
                f"{p['connections_per_host']:g} / {a['connections_per_host']:g} / {f['connections_per_host']:g} | "
                f"{'yes' if p['as_expected'] and a['as_expected'] and f['as_expected'] else 'NO'} |")
        lines.append("")
    big = max(sizes)
    lines += [f"### Where the time goes at {big} hosts (medians)", "",
              "Phases from the time each progress line arrived (see bench/fleet_stats.py); CPU seconds of "
              "the controller (the tool's process tree, getrusage), of the hosts (the sshd process trees: "
              "logins, shells, docker CLI, Ansible's remote Python) and of the engine (dockerd, "
              "containerd), each over the run; the machine has "
              f"{fleet.get('cores', '?')} cores.", "",
              "| run | wall | startup | SSH connect | facts / compare | execute / verify | finish "
              "| CPU controller | CPU hosts | CPU engine | CPU / (wall x cores) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        for tool in TOOLS:
            e = s.get(f"{scenario}/{tool}/{big}")
            if not e:
                continue
            ph, cpu = e["phases"], e["cpu"]
            connect = _fmt(ph["connect"]) if tool == "pyinfra" else "(in the task)"
            used = [v for v in cpu.values() if v is not None]
            busy = (f"{100 * sum(used) / (e['wall_s'] * fleet['cores']):.0f}%"
                    if used and e["wall_s"] and fleet.get("cores") else "-")
            lines.append(f"| {scenario}, {TOOL_NAMES[tool]} | {_fmt(e['wall_s'])} | {_fmt(ph['startup'])} | "
                         f"{connect} | {_fmt(ph['facts'])} | {_fmt(ph['execute'])} | {_fmt(ph['finish'])} | "
                         f"{_fmt(cpu['controller'])} | {_fmt(cpu['hosts'])} | {_fmt(cpu['engine'])} | {busy} |")
    lines.append("")
    return lines
