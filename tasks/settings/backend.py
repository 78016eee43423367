"""
The ``backend`` block: the FastAPI backend's uvicorn ``--reload`` fix (deploys/fix_backend_reload.py).

Only the container is required; the files named are the only files touched::

    backend = {"container": "quant-backend", "dockerfile": "/srv/quant/backend/Dockerfile",
               "compose_file": "/srv/quant/docker-compose-ml.yml"}
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool, StrictInt, StringConstraints, field_validator

from tasks.settings.base import Block, Pattern
from tasks.settings.types import Duration

ContainerName = Annotated[str, Pattern(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", "letters, digits, _ . -")]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class BackendSettings(Block):
    """The backend container, and the Dockerfile and compose service that start it."""

    container: ContainerName = Field(description="the backend container's name")
    dockerfile: str | None = Field(None, description="the backend Dockerfile on the host, to patch")
    compose_file: str | None = Field(None, description="the compose file on the host, to patch")
    compose_service: NonEmpty = "backend"
    reload_delay: Duration = Field(
        2.0, gt=0, le=60, description="seconds: `--reload-delay N` after `--reload`"
    )
    force_polling: StrictBool = Field(
        True, description="WATCHFILES_FORCE_POLLING=true: what actually makes watchfiles poll"
    )
    port: StrictInt = Field(8000, ge=1, le=65535, description="inside the container, for the health check")
    health_path: Annotated[str, Pattern(r"/\S*", "a path starting with /")] = "/health"

    @field_validator("dockerfile", "compose_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path on the host")
        return value
