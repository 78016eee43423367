"""
The ``backend`` block: the FastAPI backend's uvicorn ``--reload`` fix (deploys/fix_backend_reload.py).

Only the container is required; the files named are the only files touched::

    backend = {"container": "quant-backend", "dockerfile": "/srv/quant/backend/Dockerfile",
               "compose_file": "/srv/quant/docker-compose-ml.yml"}
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool, StrictInt

from tasks.settings.base import Block, Pattern
from tasks.settings.types import ComposeService, ContainerName, Duration, HostPath


class BackendSettings(Block):
    """The backend container, and the Dockerfile and compose service that start it."""

    container: ContainerName = Field(description="the backend container's name")
    dockerfile: HostPath | None = Field(None, description="the backend Dockerfile on the host, to patch")
    compose_file: HostPath | None = Field(None, description="the compose file on the host, to patch")
    compose_service: ComposeService = "backend"
    reload_delay: Duration = Field(
        2.0, gt=0, le=60, description="seconds: `--reload-delay N` after `--reload`"
    )
    force_polling: StrictBool = Field(
        True, description="WATCHFILES_FORCE_POLLING=true: what actually makes watchfiles poll"
    )
    port: StrictInt = Field(8000, ge=1, le=65535, description="inside the container, for the health check")
    health_path: Annotated[str, Pattern(r"/\S*", "a path starting with /")] = "/health"
