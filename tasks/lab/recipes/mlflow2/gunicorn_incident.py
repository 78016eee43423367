# Lab incident only (GUNICORN_CMD_ARGS="-c /etc/quantlab/gunicorn_incident.py"): gunicorn hooks
# that pace the replacement of killed workers and make each worker the kernel's first OOM victim.
import time

# gunicorn replaces a killed worker at once, and each new worker imports MLflow again (~1 s of
# CPU): an incident left running took most of a core (26 kills a minute, measured), on a 2-core
# machine whose tests keep a dozen incident labs up for minutes each. The first two rounds go at
# full speed (the incident's burst of SIGKILL lines, as it happened: the first comes in the first
# round); after them a replacement waits a minute (with 3 rounds and 15 s, measured: 19 boots
# and 22 s of CPU in an incident lab's first 3 minutes).
FULL_SPEED_ROUNDS = 2
PAUSE_SECONDS = 60
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
