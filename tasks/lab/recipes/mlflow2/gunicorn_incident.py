# Lab incident only (GUNICORN_CMD_ARGS="-c /etc/quantlab/gunicorn_incident.py"): make each worker
# the kernel's first OOM victim, as the workers were in the incident, rather than the `mlflow
# server` parent, which is larger at boot. Raising one's own oom_score_adj needs no privilege.
def post_fork(server, worker):
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
