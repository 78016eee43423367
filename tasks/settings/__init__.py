"""Host data, validated: one pydantic model per block, parsed once per host and handed on.

    from tasks import settings
    mlflow = settings.of_host(host, "mlflow")      # MlflowSettings, cached on the host

Every block's defaults live in its model (``tasks/settings/<block>.py``) and nowhere else; an
operator's group data may set fleet-wide values as ``<block>_defaults``, which the host's own
``<block>`` mapping overrides key by key. ``host_data.schema.json`` is generated from the models
(``python -m tasks.settings.schema``) so editors can validate inventories.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tasks.settings.backend import BackendSettings
from tasks.settings.base import Block, parse_block, type_name
from tasks.settings.cleanup import CleanupSettings
from tasks.settings.errors import SettingsError
from tasks.settings.mlflow import MlflowSettings
from tasks.settings.onboard import OnboardSettings
from tasks.settings.postgres import DB_KEYS, DbSettings, PostgresSettings, gather_db
from tasks.settings.remediate import RemediateSettings
from tasks.settings.schedule import ScheduleSettings
from tasks.settings.stack import StackSettings
from tasks.settings.watcher import WatcherSettings

# Block name in host data -> its model. Every deploy reads its blocks through of_host().
BLOCKS: dict[str, type[Block]] = {
    "mlflow": MlflowSettings,
    "cleanup": CleanupSettings,
    "cleanup_schedule": ScheduleSettings,
    "postgres": PostgresSettings,
    "db": DbSettings,
    "onboard": OnboardSettings,
    "backend": BackendSettings,
    "stack": StackSettings,
    "remediate": RemediateSettings,
    "watcher": WatcherSettings,
}

# Blocks gathered from several top-level host-data keys (``db_roles``, ``db_grants``, ...) rather
# than one mapping: block -> function(host data) -> the block's mapping. Their errors name the
# keys as written (no block prefix); TOP_LEVEL_KEYS says which schema property is which key.
GATHER: dict[str, Callable[[Any], dict[str, Any]]] = {
    "db": gather_db,
}
TOP_LEVEL_KEYS: dict[str, dict[str, str]] = {
    "db": {key: key for key in DB_KEYS},
}

_CACHE_ATTR = "_quant_settings"


def load(
    block: str, host_name: str, data: Mapping[str, Any] | None, group: Mapping[str, Any] | None = None
) -> Any:
    """Validate one block: the model's defaults, then ``group``, then ``data`` (key by key)."""
    if group is not None and not isinstance(group, Mapping):
        raise SettingsError(host_name, [f"{block}_defaults: expected a mapping, got {type_name(group)}"])
    return parse_block(BLOCKS[block], host_name, "" if block in GATHER else block, group, data)


def of_host(host: Any, block: str) -> Any:
    """The host's validated ``block``, parsed on first use and kept on the host for the run."""
    # pyinfra's `from pyinfra import host` is one context proxy for every host: cache on the
    # real Host behind it, or every host would get the first one's settings.
    if hasattr(type(host), "_get_module"):
        host = host._get_module()
    cache = host.__dict__.setdefault(_CACHE_ATTR, {})
    if block not in cache:
        data = GATHER[block](host.data) if block in GATHER else host.data.get(block)
        cache[block] = load(block, host.name, data, host.data.get(f"{block}_defaults"))
    return cache[block]


__all__ = ["BLOCKS", "Block", "SettingsError", "load", "of_host"]
