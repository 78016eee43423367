"""How a refusal reaches the operator: one clear line, not a traceback.

Every deploy file calls ``quiet_refusals()`` first (an explicit call: importing ``tasks`` changes
nothing in the process).
"""

from __future__ import annotations

import gevent
from pyinfra.api.exceptions import PyinfraError


def quiet_refusals() -> None:
    """pyinfra runs each host's operations in gevent greenlets. A PyinfraError raised there (our
    refusals: OperationError, settings errors) is printed by gevent's hub as a traceback and then
    shown again by pyinfra's CLI as one clear line. Tell the hub it is not an error to print; any
    other exception (a bug) still prints its traceback. Idempotent."""
    hub = gevent.get_hub()
    if not issubclass(PyinfraError, hub.NOT_ERROR):
        hub.NOT_ERROR = (*hub.NOT_ERROR, PyinfraError)
