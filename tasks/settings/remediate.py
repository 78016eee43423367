"""
The ``remediate`` block: how deploys/remediate.py reads a host's logs and keeps its record.

    remediate = {
        "catalog": None,      # a signature catalog on the controller; None: tasks/core/signatures.yml
        "since": "2h",        # docker logs --since (a duration or an RFC 3339 time)...
        "tail": 2000,         # ...and at most this many lines per container
        "record_path": "/var/lib/quantlab/remediation-runs.json",  # last runs, on the host (throttle)
        "report_dir": "remediation-reports",  # run records <host>.json on the controller
        "containers": {},     # {role: container} beyond what the mlflow/postgres/backend/stack data say
        "verify": True,       # verify each remediation after it ran
    }

The catalog is the host's one signature catalog: deploys/verify_stack.py reads it too. A bad
catalog is a settings problem (:func:`host_catalog`), reported before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field, StrictBool, StrictInt

from tasks.core.signatures import CATALOG, REMEDIATIONS, Signature, read_catalog
from tasks.settings.base import Block, Pattern
from tasks.settings.errors import SettingsError
from tasks.settings.stack import Since
from tasks.settings.types import ContainerName, HostPath

# Env override for one run: where the run records go.
REPORT_DIR_ENV = "QUANTLAB_REMEDIATE_REPORT_DIR"

ServiceRole = Annotated[str, Pattern(r"[a-z][a-z0-9_-]*", "a service role such as mlflow or postgres")]


class RemediateSettings(Block):
    """Log-signature remediation: which catalog, how far back, where the record lives."""

    catalog: str | None = Field(
        None, min_length=1, description="signature catalog on the controller (None: the packaged one)"
    )
    since: Since = Field("2h", description="docker logs --since: a duration or an RFC 3339 time")
    tail: StrictInt = Field(2000, ge=1, le=100000, description="at most this many lines per container")
    record_path: HostPath = Field(
        "/var/lib/quantlab/remediation-runs.json", description="last runs, on the host (throttle)"
    )
    report_dir: str | None = Field(
        "remediation-reports",
        description=(f"run records <host>.json on the controller (env {REPORT_DIR_ENV} overrides)"),
    )
    containers: dict[ServiceRole, ContainerName] = Field(
        default_factory=dict, description="{role: container} beyond what the other blocks say"
    )
    verify: StrictBool = Field(True, description="verify each remediation after it ran")

    @property
    def catalog_path(self) -> str:
        return self.catalog or str(CATALOG)


def host_catalog(
    host_name: str, settings: RemediateSettings, known_remediations: Iterable[str] = REMEDIATIONS
) -> tuple[Signature, ...]:
    """The host's signature catalog, validated; every problem a line naming its entry."""
    signatures, problems = read_catalog(settings.catalog, known_remediations=known_remediations)
    if problems:
        raise SettingsError(
            host_name, [f"remediate.catalog {settings.catalog_path}: {problem}" for problem in problems]
        )
    return signatures
