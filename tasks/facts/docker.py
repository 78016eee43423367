"""Docker facts: what the engine has, read through the `docker` CLI on the target (any connector).

Read-only: they never change a host, and they return no secret the caller did not already hold
(`docker inspect` shows the env the deploy itself wrote).
"""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

# The kept copy of a container during a recreate: the new one is verified before it goes.
PREVIOUS_SUFFIX = "-previous"
# Marks the sections of ContainerInspect's output (container JSON, image JSON).
SECTION = "### quantlab "


class ContainerInspect(FactBase):
    """
    `docker inspect` of a container, of its kept previous copy and of an image: one remote
    command running two `docker` CLI calls (each CLI start costs the host a few tens of ms).

    Returns ``{"container": {...} | None, "previous": {...} | None, "image": {...} | None}``.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, container, image):
        # `docker container inspect A B` prints the ones that exist (a JSON list) and exits 1 when
        # one is missing; the image is asked by type, so a like-named container cannot answer.
        # "No such ..." is an answer; any other error (engine down, no permission) fails the fact,
        # so that a plan never says "create" for a container it could not see.
        names = f"{shlex.quote(container)} {shlex.quote(container + PREVIOUS_SUFFIX)}"
        header = shlex.quote(f"{SECTION}containers {container}")
        return (
            f"echo {header}; {{ found=$(docker container inspect {names} 2>&1 1>&3); }} 3>&1; "
            f"echo '{SECTION}image'; {{ image=$(docker image inspect {shlex.quote(image)} 2>&1 1>&3); }} 3>&1; "
            """printf '%s\\n' "$found" "$image" | grep -v -e 'No such' -e '^$' >&2 && exit 1; true"""
        )

    def process(self, output):
        sections: dict[str, list[str]] = {}
        current, container = None, ""
        for line in output:
            if line.startswith(SECTION):
                current, _, container_ = line[len(SECTION) :].strip().partition(" ")
                container = container_ or container
                sections[current] = []
            elif current:
                sections[current].append(line)
        found = {}
        for key in ("containers", "image"):
            text = "\n".join(sections.get(key, [])).strip()
            value = json.loads(text) if text else []
            found[key] = value if isinstance(value, list) else []
        by_name = {item.get("Name", "").lstrip("/"): item for item in found["containers"]}
        return {
            "container": by_name.get(container),
            "previous": by_name.get(container + PREVIOUS_SUFFIX),
            "image": found["image"][0] if found["image"] else None,
        }


class ImageVersion(FactBase):
    """A Python distribution's version inside an image, read by a throwaway container
    (no network). None when the image or the distribution is missing."""

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, image, distribution):
        script = "import importlib.metadata as m, sys; print('version ' + m.version(sys.argv[1]))"
        probe = f"python3 -c {shlex.quote(script)} {shlex.quote(distribution)}"
        return (
            f"docker run --rm --network none --entrypoint sh {shlex.quote(image)} -c "
            f"{shlex.quote(probe)} 2>&1 || true"
        )

    def process(self, output):
        for line in output:
            if line.startswith("version "):
                return line.split(" ", 1)[1].strip()
        return None
