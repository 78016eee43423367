"""Fault points: where a test can make the controller die (or fail) in the middle of a change.

A multi-step change (a recreate, a compose apply, a role then its grants, a cleanup) must leave
the host in a state the next run recognises and finishes or undoes. To prove it, the tests run
pyinfra with ``QUANT_FAULT=<step>`` (or ``<step>:kill``, the default; several, comma-separated)
in its environment: at that step the controller process kills itself with SIGKILL, as an
operator's laptop losing power would, with no ``finally`` or rollback running. ``<step>:raise`` raises :class:`InjectedFault`
there instead (a plain ``RuntimeError``, not pyinfra's ``OperationError``), to prove that a
rollback runs on any exception.

Unset (or naming another step), every fault point does nothing. The steps:

- ``recreate.after-rename``: the current container renamed ``<name>-previous``, still running
- ``recreate.after-stop``: ``<name>-previous`` stopped, no new container yet
- ``recreate.after-create``: the new container created, not started (nor connected to its other
  networks)
- ``recreate.after-start``: the new container started, not yet verified
- ``recreate.verify``: during verification (its settings read back, the service checks next)
- ``recreate.rollback``: during a rollback (the failed new container removed, the previous one
  not yet renamed back)
- ``compose.after-write``: the compose file written (the previous one kept beside it), not applied
- ``compose.after-up``: compose applied the file, the container not yet verified
- ``db_users.after-role``: a role created or changed (its SQL ran), before its verification and
  before any database or grant
- ``cleanup.mid-delete``: inside the deletion's transaction, rows deleted, not committed
- ``cleanup.mid-vacuum``: between the VACUUM of two tables, the cleanup lock held
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "QUANT_FAULT"
STEPS = frozenset(
    {
        "recreate.after-rename",
        "recreate.after-stop",
        "recreate.after-create",
        "recreate.after-start",
        "recreate.verify",
        "recreate.rollback",
        "compose.after-write",
        "compose.after-up",
        "db_users.after-role",
        "cleanup.mid-delete",
        "cleanup.mid-vacuum",
    }
)
MODES = ("kill", "raise")
MARK = "quant fault:"  # the line a fault point writes to stderr before it acts


class InjectedFault(RuntimeError):
    """Raised at a fault point set to ``raise``: not an OperationError, on purpose."""


def armed(step: str, environ=None) -> str | None:
    """The mode (``kill`` or ``raise``) when ``QUANT_FAULT`` names ``step``, else None."""
    if step not in STEPS:
        raise ValueError(f"unknown fault point {step!r}")
    value = (os.environ if environ is None else environ).get(ENV, "")
    for item in value.split(","):
        name, _, mode = item.strip().partition(":")
        if name != step:
            continue
        mode = mode or "kill"
        if mode not in MODES:
            raise ValueError(f"{ENV}={value!r}: the mode must be one of {', '.join(MODES)}")
        return mode
    return None


def _die(step: str) -> None:
    sys.stderr.write(f"{MARK} killing the controller at {step}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def fault_point(step: str, environ=None) -> None:
    """Kill this process, or raise :class:`InjectedFault`, when ``QUANT_FAULT`` names ``step``;
    otherwise nothing."""
    mode = armed(step, environ)
    if mode == "kill":
        _die(step)
    elif mode == "raise":
        sys.stderr.write(f"{MARK} raising at {step}\n")
        sys.stderr.flush()
        raise InjectedFault(f"fault injected at {step}")


def kill_during(step: str, seconds: float, environ=None) -> bool:
    """For a step that runs on the host (a SQL transaction): when ``QUANT_FAULT`` names ``step``
    (mode ``kill``), kill this process ``seconds`` from now, while the caller's remote command
    is still running, and return True (the caller then makes that command last long enough);
    else False and nothing happens."""
    if armed(step, environ) != "kill":
        return False
    timer = threading.Timer(seconds, _die, (step,))
    timer.daemon = True
    timer.start()
    return True
