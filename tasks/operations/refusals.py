"""A host's failure is its own: how every failure reaches the operator, and fails one host only.

pyinfra ends the whole run when an exception leaves an operation's generator (it re-raises it
from the host's greenlet in ``_run_single_op``) or the deploy file while it is loaded for one
host (``_parallel_load_hosts``): a refusal on one host ("image ... is not on this host", a refused
downgrade), a settings error or a bug stopped every host, some half way through their deploy.
What pyinfra does fail per host is an operation whose command fails. So every operation and
deploy of this project is declared with :func:`operation` and :func:`deploy` from here (pyinfra's
own, plus this), and an exception becomes that host's failing command:

- in an operation's generator while it runs (``-y``: generators run at execution only): the
  operation yields :func:`fail_host`'s FunctionCommand instead, which prints the reason in red and
  returns False; pyinfra counts the operation failed and takes the host out of the run; the
  others go on to their next operations;
- in an operation's generator while changes are detected (``--dry``, or a run that asks before
  it changes anything), or in a deploy function's body while it is loaded for a host (its
  settings, a fact it reads): the reason is printed and the host is failed at once
  (``state.fail_hosts``), so none of its operations runs; the others load and run as planned
  (when no other host is left, the exception goes on and pyinfra ends the run with it, as before);
- a host pyinfra has already failed (a fact it could not read, a lost connection: pyinfra names
  it) stops quietly.

The reason is the exception's text for our refusals and settings errors (PyinfraError: written
for the operator), else its type and text, with the traceback logged for a bug. The exit code is
pyinfra's: non-zero when a host failed. An operation called from another with ``_inner`` raises
as before, so the outermost operation decides, and the operation tests see the exception.

Every deploy file also calls ``quiet_refusals()`` first (an explicit call: importing ``tasks``
changes nothing in the process).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Generator
from typing import Any

import gevent
from pyinfra import host, logger
from pyinfra.api import FunctionCommand
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.api import operation as pyinfra_operation
from pyinfra.api.exceptions import PyinfraError


def quiet_refusals() -> None:
    """pyinfra runs each host's operations in gevent greenlets. A PyinfraError raised there (our
    refusals: OperationError, settings errors) is printed by gevent's hub as a traceback and then
    shown again by pyinfra's CLI as one clear line. Tell the hub it is not an error to print; any
    other exception (a bug) still prints its traceback. Idempotent."""
    hub = gevent.get_hub()
    if not issubclass(PyinfraError, hub.NOT_ERROR):
        hub.NOT_ERROR = (*hub.NOT_ERROR, PyinfraError)


def failure_reason(exc: BaseException) -> str:
    """What the operator reads: a refusal's or settings error's own text, else type and text."""
    if isinstance(exc, PyinfraError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _already_failed(target) -> bool:
    state = getattr(target, "state", None)
    return state is not None and target in getattr(state, "failed_hosts", ())


def _say(target, reason: str) -> None:
    target.log_styled(reason, fg="red", log_func=logger.error)


def _failed(state, host, reason: str) -> bool:
    """The failing command: the reason in red; False fails the operation, and so the host."""
    _say(host, reason)
    return False


def fail_host(reason: str) -> FunctionCommand:
    """The command that fails this host with ``reason`` when it runs."""
    return FunctionCommand(_failed, (reason,), {})


def _reported(exc: Exception) -> str:
    reason = failure_reason(exc)
    if not isinstance(exc, (PyinfraError, OSError, TimeoutError)):
        # A bug: its traceback helps whoever fixes it; the host still fails alone.
        logger.warning(f"{host.print_prefix}{traceback.format_exc()}")
    return reason


def fail_now(target, reason: str) -> bool:
    """While the deploy is planned (loaded, or its changes detected): name the reason and take
    the host out of the run at once, so none of its operations runs; pyinfra counts it failed
    (non-zero exit; an interactive run asks whether to go on, as for any failed host). False when
    no other host is left to go on: the caller re-raises, and pyinfra ends the run with the
    error, as it always did for a lone host."""
    real = target._get_module() if hasattr(type(target), "_get_module") else target
    state = real.state
    if not set(getattr(state, "active_hosts", ())) - {real}:
        return False
    _say(real, reason)
    state.fail_hosts({real})
    return True


def fails_alone(func: Callable[..., Generator]) -> Callable[..., Generator]:
    """An operation's generator whose exception fails this host alone (module doc)."""

    @functools.wraps(func)
    def generator(*args: Any, **kwargs: Any) -> Generator:
        try:
            yield from func(*args, **kwargs)
        except Exception as exc:
            if _already_failed(host):
                return  # pyinfra has failed it and said why (a fact, a lost connection)
            if host.state.is_executing:
                yield fail_host(_reported(exc))
            elif not fail_now(host, _reported(exc)):
                raise

    return generator


def operation(*args: Any, **kwargs: Any):
    """pyinfra's ``@operation(...)``, with the host failing alone on an exception (module doc).
    ``_inner`` is the undecorated generator: called from another operation, it raises."""

    def decorator(func):
        wrapped = pyinfra_operation(*args, **kwargs)(fails_alone(func))
        wrapped._inner = func
        return wrapped

    return decorator


def deploy(name: str, data_defaults: dict | None = None):
    """pyinfra's ``@deploy(name)``, with the host failing alone when the deploy's body raises
    while it is loaded for a host (a settings error, a fact it reads): module doc."""

    def decorator(func):
        wrapped = pyinfra_deploy(name, data_defaults)(func)

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any):
            try:
                return wrapped(*args, **kwargs)
            except Exception as exc:
                if not _already_failed(host) and not fail_now(host, _reported(exc)):
                    raise
                return None

        guarded._inner = getattr(wrapped, "_inner", func)  # type: ignore[attr-defined]
        return guarded

    return decorator
