"""PNG plots from one bench/run result file (run by the bench venv, which has matplotlib).

    bench/.venv-ansible/bin/python bench/plots.py bench/results/<stamp>-quick.json bench/results
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path: str, out: str) -> int:
    results = json.loads(Path(path).read_text())
    out_dir = Path(out)
    load = results.get("load", {})
    if "after" in load:
        fig, ax = plt.subplots(figsize=(8, 4))
        for label, color in (("before", "tab:red"), ("after", "tab:green")):
            series = load[label]["memory_series"]
            if series:
                ax.plot([t for t, _ in series], [m for _, m in series], color=color,
                        label=f"{label} the fix ({load[label]['sigkill_lines']} SIGKILL lines)")
            limit = load[label].get("memory_limit")
            if limit:
                ax.axhline(limit / 1048576, color=color, linestyle=":", linewidth=1)
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel("MLflow container memory (MiB, docker stats)")
        ax.set_title(f"MLflow under {load['clients']} clients for {load['seconds']} s (dotted: limit)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "memory.png", dpi=110)
        plt.close(fig)
    timelines = results.get("repair", {}).get("timelines", {})
    if timelines:
        fig, axes = plt.subplots(len(timelines), 1, figsize=(8, 1.3 + 1.1 * len(timelines)), sharex=True)
        axes = axes if len(timelines) > 1 else [axes]
        names = {"fix_mlflow": "fix_mlflow (drifted -> recreated)", "naive": "docker rm -f + run + poll",
                 "incident": "incident (OOM-killed) -> fix_mlflow"}
        for ax, (method, samples) in zip(axes, timelines.items()):
            ax.scatter([t for t, _ in samples], [1 if ok else 0 for _, ok in samples], s=4,
                       c=["tab:green" if ok else "tab:red" for _, ok in samples])
            ax.set_yticks([0, 1], ["fail", "OK"])
            ax.set_ylim(-0.5, 1.5)
            ax.set_title(names.get(method, method), fontsize=9, loc="left")
        axes[-1].set_xlabel("seconds since the repair started (/health every 100 ms)")
        fig.tight_layout()
        fig.savefig(out_dir / "health_timeline.png", dpi=110)
        plt.close(fig)
    fleet = results.get("fleet", {}).get("summary")
    if fleet:
        hosts = results["fleet"]["hosts"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for tool, color in (("pyinfra", "tab:blue"), ("ansible", "tab:orange")):
            ax.plot(hosts, [fleet[f"{tool}/{n}"]["wall_s"] for n in hosts], marker="o", color=color,
                    label={"pyinfra": "pyinfra fix_mlflow", "ansible": "Ansible docker_container"}[tool])
        ax.set_xlabel("hosts (sshd on 127.0.0.1)")
        ax.set_ylabel("no-change run, median wall time (s)")
        ax.set_ylim(bottom=0)
        ax.set_xticks(hosts)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "scaling.png", dpi=110)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
