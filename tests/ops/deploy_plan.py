"""A deploy's plan without a host: pyinfra's own State and Inventory, facts answered from
recorded values, and each operation's commands rendered as tests/ops/harness.py renders them.

    steps = plan(onboard, {"onboard": {...}}, {"onboard.OnboardProbe": {"socket=/var/run/docker.sock": {...}}})
    [("Preflight: can this host be onboarded?", [["_fail", ["cannot onboard ..."], {}]])]

Facts are keyed as in pyinfra's test files: ``"<module>.<Fact>"``, then the fact's arguments as
``get_kwargs_str`` writes them (``""`` for none; ``"*"``: any other arguments, e.g. every path
absent on a fresh host). A fact the plan reads but the test did not record fails the test with
its name, so a test lists what its plan reads.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest.mock import patch

from pyinfra.api import Config, Inventory, State
from pyinfra.api.deploy import add_deploy
from pyinfra.api.host import Host
from pyinfra.api.util import get_kwargs_str
from pyinfra.context import ctx_host, ctx_state

from tests.ops.harness import Planned


class MissingFact(KeyError):
    pass


def fact_key(fact_cls: type) -> str:
    return f"{fact_cls.__module__.split('.')[-1]}.{fact_cls.__name__}"


def plan(deploy_func: Callable[..., Any], host_data: dict, facts: dict[str, Any],
         *args: Any, **kwargs: Any) -> list[tuple[str, list[Any]]]:
    """Run ``deploy_func`` for one host ``h1`` with ``host_data``; its operations in order, each
    ``(name, commands)``. Commands are generated as at execution (``--dry`` would show them)."""
    inventory = Inventory(([("h1", dict(host_data))], {}))
    state = State(inventory, Config())
    host = inventory.get_host("h1")
    read: list[str] = []

    def get_fact(self, fact_cls, *fact_args, **fact_kwargs):
        fact_kwargs = {k: v for k, v in fact_kwargs.items() if not k.startswith("_")}
        if fact_args:
            raise AssertionError(f"{fact_key(fact_cls)}: positional fact arguments are not recorded")
        key, arguments = fact_key(fact_cls), get_kwargs_str(fact_kwargs)
        read.append(f"{key}({arguments})")
        recorded = facts.get(key, MissingFact)
        if isinstance(recorded, dict) and arguments and (arguments in recorded or "*" in recorded):
            return recorded.get(arguments, recorded.get("*"))
        if recorded is MissingFact or arguments:
            raise MissingFact(f"no recorded fact {key}({arguments})")
        return recorded

    steps = []
    with patch.object(Host, "get_fact", get_fact):
        add_deploy(state, deploy_func, *args, host=[host], **kwargs)
        with ctx_state.use(state), ctx_host.use(host):
            for op_hash in state.get_op_order():
                data = state.ops[host].get(op_hash)
                if data is None:
                    continue
                # "Deploy name | operation name": the operation's own part
                name = ", ".join(sorted(n.rpartition(" | ")[2] for n in state.op_meta[op_hash].names))
                steps.append((name, Planned(list(data.command_generator()), None, [], host).rendered()))
    return steps
