# Lab incident only (GUNICORN_CMD_ARGS="-c /etc/quantlab/gunicorn_incident.py"): gunicorn hooks
# that pace the replacement of killed workers and make each worker the kernel's first OOM victim.
import time

# gunicorn replaces a killed worker at once, and each new worker imports MLflow again (~2 s of
# CPU): an incident left running took most of a core (26 kills a minute, measured), on a 2-core
# machine whose tests keep several incident labs up for minutes. The first rounds go at full
# speed (the incident's burst of SIGKILL lines, as it happened); after them a replacement waits.
FULL_SPEED_ROUNDS = 3
PAUSE_SECONDS = 15
_forks = 0


def pre_fork(server, worker):
    global _forks
    _forks += 1
    if _forks > server.cfg.workers * FULL_SPEED_ROUNDS:
        time.sleep(PAUSE_SECONDS)


# The workers were the incident's OOM victims, not the `mlflow server` parent, which is larger at
# boot. Raising one's own oom_score_adj needs no privilege.
def post_fork(server, worker):
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
