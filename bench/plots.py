"""PNG plots from one bench/run result file (run by the bench venv, which has matplotlib).

    bench/.venv-ansible/bin/python bench/plots.py bench/results/<stamp>-quick.json bench/results

- scaling.png: wall time per fleet size, no-change and one-change runs side by side; pyinfra and
  both Ansible lines (warm and new connection); a marker at the median, a thick bar from the first
  to the third quartile and a thin one from the fastest to the slowest run.
- health_timeline.png: every /health request as an interval from send to answer (or failure),
  green OK, red failed, so a request that blocked for a second draws a second-long bar.
- memory.png: container memory before and after the fix, with gunicorn's SIGKILL lines and the
  cgroup's OOM kills marked, and under it the requests answered OK / failed each second.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TOOLS = (("pyinfra", "pyinfra fix_mlflow", "tab:blue", "o"),
         ("ansible", "Ansible, warm connection", "tab:orange", "s"),
         ("ansible-fresh", "Ansible, new connection", "tab:red", "^"))


def scaling(fleet: dict, out_dir: Path):
    summary, hosts = fleet["summary"], fleet["hosts"]
    scenarios = [s for s in ("no-change", "one-change") if any(k.startswith(s + "/") for k in summary)]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4.2), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for shift, (tool, label, color, marker) in enumerate(TOOLS):
            points = [(n, summary.get(f"{scenario}/{tool}/{n}", {}).get("spread")) for n in hosts]
            points = [(n, sp) for n, sp in points if sp]
            if not points:
                continue
            # a small sideways offset so the three tools' bars do not hide each other
            xs = [n * (1 + 0.03 * (shift - 1)) if len(hosts) > 1 else n + 0.1 * (shift - 1) for n, _ in points]
            med = [sp["median"] for _, sp in points]
            ax.plot(xs, med, marker=marker, color=color, label=label, linewidth=1.5)
            ax.vlines(xs, [sp["min"] for _, sp in points], [sp["max"] for _, sp in points], color=color,
                      linewidth=1)
            ax.vlines(xs, [sp["q1"] for _, sp in points], [sp["q3"] for _, sp in points], color=color,
                      linewidth=4, alpha=0.6)
        runs = max((summary.get(f"{scenario}/pyinfra/{n}", {}).get("runs") or 0) for n in hosts)
        ax.set_title(f"{scenario} run ({runs} run{'s' if runs != 1 else ''} per point)", fontsize=10)
        ax.set_xlabel("hosts (sshd on 127.0.0.1)")
        ax.set_ylabel("wall time (s): median, IQR (thick), min-max (thin)")
        ax.set_ylim(bottom=0)
        ax.set_xticks(hosts)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out_dir / "scaling.png", dpi=110)
    plt.close(fig)


def health_timeline(timelines: dict, out_dir: Path):
    names = {"fix_mlflow": "fix_mlflow (drifted -> recreated)", "naive": "docker rm -f + run + poll",
             "incident": "incident (OOM-killed) -> fix_mlflow"}
    fig, axes = plt.subplots(len(timelines), 1, figsize=(9, 1.3 + 1.1 * len(timelines)), sharex=True, squeeze=False)
    for ax, (method, samples) in zip(axes[:, 0], timelines.items()):
        for ok, row, color in ((True, 1, "tab:green"), (False, 0, "tab:red")):
            # [sent, answered, ok]; an old result file has [sent, ok]: drawn 0.1 s wide
            bars = [(s[0], max(s[1] - s[0], 0.02)) if len(s) == 3 else (s[0], 0.1)
                    for s in samples if s[-1] is ok]
            if bars:
                ax.broken_barh(bars, (row - 0.3, 0.6), facecolors=color)
        ax.set_yticks([0, 1], ["failed", "OK"])
        ax.set_ylim(-0.5, 1.5)
        ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(names.get(method, method), fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds since the repair started (each bar: one /health request, send -> answer)")
    fig.tight_layout()
    fig.savefig(out_dir / "health_timeline.png", dpi=110)
    plt.close(fig)


def memory(load: dict, out_dir: Path):
    labels = [label for label in ("before", "after") if label in load]
    fig, axes = plt.subplots(2, len(labels), figsize=(6 * len(labels), 6), sharex="col", squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for column, label in enumerate(labels):
        x = load[label]
        top, bottom = axes[0, column], axes[1, column]
        series = x["memory_series"]
        if series:
            top.plot([t for t, _ in series], [m for _, m in series], color="tab:blue",
                     label="memory (cgroup usage less inactive file cache)")
        if x.get("memory_limit"):
            top.axhline(x["memory_limit"] / 1048576, color="black", linestyle=":", linewidth=1, label="limit")
        for i, t in enumerate(x.get("sigkill_s") or []):
            top.axvline(t, color="tab:red", linewidth=0.8, alpha=0.7,
                        label="gunicorn worker SIGKILL (log line)" if i == 0 else None)
        ooms = x.get("oom_kills_s") or []
        if ooms:
            top.plot(ooms, [x["memory_limit"] / 1048576 if x.get("memory_limit") else 0] * len(ooms), "x",
                     color="darkred", markersize=8, label="OOM kill (the cgroup's oom_kill counter)")
        top.set_ylabel("MiB")
        top.set_ylim(bottom=0)
        top.set_title(f"{label} the fix: {x['sigkill_lines']} SIGKILL lines, {len(ooms)} OOM kills, "
                      f"{x['load']['ok']}/{x['load']['requests']} requests OK", fontsize=9)
        top.legend(fontsize=7, loc="lower right")
        per_second = x["load"].get("per_second") or []
        offset = x.get("load_offset_s", 0.0)
        if per_second:
            ts = [offset + t for t, _, _ in per_second]
            bottom.bar(ts, [ok for _, ok, _ in per_second], width=0.9, align="edge", color="tab:green", label="OK")
            bottom.bar(ts, [f for _, _, f in per_second], width=0.9, align="edge", color="tab:red",
                       bottom=[ok for _, ok, _ in per_second], label="failed")
            bottom.legend(fontsize=7)
        bottom.set_ylabel("requests / s")
        bottom.set_xlabel("seconds since memory sampling started")
    fig.suptitle(f"MLflow under {load['clients']} clients for {load['seconds']} s", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "memory.png", dpi=110)
    plt.close(fig)


def main(path: str, out: str) -> int:
    results = json.loads(Path(path).read_text())
    out_dir = Path(out)
    load = results.get("load", {})
    if "after" in load:
        memory(load, out_dir)
    timelines = results.get("repair", {}).get("timelines", {})
    if timelines:
        health_timeline(timelines, out_dir)
    fleet = results.get("fleet", {})
    if any(isinstance(v, dict) and "spread" in v for v in fleet.get("summary", {}).values()):
        scaling(fleet, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
