"""
Keep a compose file's MLflow service in step with the deploy, so a later
``docker compose up`` does not bring the old settings back.

Only the named service's ``command``, the given ``environment`` keys and the memory
limit/reservation are touched. Values are compared by meaning (``1g`` == ``1024m`` ==
``1073741824``, a string command == its list form): when nothing differs the text is
returned unchanged, byte for byte, comments included. When something differs the file is
re-dumped with PyYAML: key order is kept, but comments and anchors are lost (PyYAML does
not keep them) - the changed file says so in its first line.

Do not pass secret values here: a compose file is plaintext on disk. For a secret key pass
``"${KEY}"`` so compose reads it from its environment at ``up`` time.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from tasks.core.sizes import docker_size, parse_size

HEADER = "# Managed in part by deploys/fix_mlflow.py (service command, environment, memory).\n"


class ComposeError(ValueError):
    pass


def same_command(old: Any, new: list[str]) -> bool:
    if isinstance(old, str):
        try:
            return shlex.split(old) == new
        except ValueError:
            return False
    return isinstance(old, list) and [str(x) for x in old] == new


def _same_size(old: Any, new: int) -> bool:
    try:
        return parse_size(old) == new
    except ValueError:
        return False


def merge_environment(current: Any, wanted: Mapping[str, str]) -> tuple[Any, bool]:
    """Set `wanted` keys; keep the file's form (mapping or list of KEY=VALUE)."""
    if current is None:
        return dict(wanted), bool(wanted)
    if isinstance(current, Mapping):
        mapping, changed = dict(current), False
        for key, value in wanted.items():
            old = mapping.get(key)
            if key not in mapping or (str(old) if old is not None else None) != value:
                mapping[key] = value
                changed = True
        return mapping, changed
    if isinstance(current, list):
        merged: list[Any] = []
        changed, seen = False, set()
        for item in current:
            key, sep, value = str(item).partition("=")
            if key in wanted:
                seen.add(key)
                entry = f"{key}={wanted[key]}"
                changed |= entry != item or not sep
                merged.append(entry)
            else:
                merged.append(item)
        for key, value in wanted.items():
            if key not in seen:
                merged.append(f"{key}={value}")
                changed = True
        return merged, changed
    raise ComposeError(f"environment is a {type(current).__name__}, expected a mapping or list")


def _mapping_at(parent: dict, key: str) -> dict:
    # `deploy:` with nothing under it loads as None.
    if parent.get(key) is None:
        parent[key] = {}
    if not isinstance(parent[key], dict):
        raise ComposeError(f"{key} is a {type(parent[key]).__name__}, expected a mapping")
    return parent[key]


def _set_memory(service: dict, mem_limit: int, mem_reservation: int) -> bool:
    changed = False
    deploy = _mapping_at(service, "deploy")
    resources = _mapping_at(deploy, "resources")
    for section, value in (("limits", mem_limit), ("reservations", mem_reservation)):
        block = _mapping_at(resources, section)
        if not _same_size(block.get("memory"), value):
            block["memory"] = docker_size(value)
            changed = True
    # Compose refuses mem_limit that disagrees with deploy.resources: keep the legacy keys equal.
    for legacy, value in (("mem_limit", mem_limit), ("mem_reservation", mem_reservation)):
        if legacy in service and not _same_size(service[legacy], value):
            service[legacy] = docker_size(value)
            changed = True
    return changed


def patch_compose_service(
    yaml_text: str,
    service: str,
    command: list[str],
    environment: Mapping[str, str],
    mem_limit_bytes: int,
    mem_reservation_bytes: int,
) -> tuple[str, bool]:
    """
    Return ``(new_text, changed)``. Idempotent: patching the result again gives
    ``(same text, False)``. Raises ComposeError when the file or service is missing/invalid.
    """
    try:
        doc = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        raise ComposeError(f"compose file is not valid YAML: {exc}") from exc
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict):
        raise ComposeError("compose file has no 'services' mapping")
    if not isinstance(services.get(service), dict):
        known = ", ".join(map(str, services)) or "none"
        raise ComposeError(f"service {service!r} is not in the compose file (services: {known})")
    svc = services[service]
    command = [str(part) for part in command]

    changed = False
    if not same_command(svc.get("command"), command):
        svc["command"] = command
        changed = True
    env, env_changed = merge_environment(svc.get("environment"), dict(environment))
    if env_changed:
        svc["environment"] = env
        changed = True
    changed |= _set_memory(svc, mem_limit_bytes, mem_reservation_bytes)

    if not changed:
        return yaml_text, False
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return HEADER + body, True
