"""The remediation runner's operations, facts and their pure cores (see the README)."""


def _quiet_refusals() -> None:
    # pyinfra runs each host's operation in a gevent greenlet. A PyinfraError raised there (our
    # refusals: OperationError, settings errors) is printed by gevent's hub as a traceback and
    # then shown again by pyinfra's CLI as one clear line. Tell the hub it is not an error to
    # print; any other exception (a bug) still prints its traceback.
    try:
        import gevent
        from pyinfra.api.exceptions import PyinfraError
    except ImportError:  # pragma: no cover - pyinfra is a dependency
        return
    hub = gevent.get_hub()
    if not issubclass(PyinfraError, hub.NOT_ERROR):
        hub.NOT_ERROR = (*hub.NOT_ERROR, PyinfraError)


_quiet_refusals()
