"""Docker facts: what the engine has, read through the `docker` CLI on the target (any connector).

Read-only: they never change a host, and their output never holds a secret value. pyinfra prints a
fact command's raw output at -vvv/--debug and when the fact fails, so the filtering happens on the
host, in the command itself (tasks/core/redact.py): secret env values come back as digests, URL
passwords as ``***``. What needs the values (a recreate) reads them at execution time, unprinted.
"""

from __future__ import annotations

import json
import re
import shlex

from pyinfra.api import FactBase

from tasks.core.redact import INSPECT_AWK, REDACTED

# The kept copy of a container during a recreate: the new one is verified before it goes.
PREVIOUS_SUFFIX = "-previous"
# Marks the sections of ContainerInspect's output (container JSON, image JSON).
SECTION = "### quantlab "
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Per object: the whole document (one line: Go's JSON has no raw newline), then each env entry
# as JSON and as hex (the host digests the hex, so no decoding is needed there).
_ENV_LINES = r'{{range .Env}}E {{json .}}{{"\t"}}{{printf "%x" .}}{{"\n"}}{{end}}'
TEMPLATE = r'O {{json .}}{{"\n"}}{{with .Config}}' + _ENV_LINES + "{{end}}"

# SHA-256 on the host: coreutils or busybox, else openssl, else python3.
_HASHER = (
    "if command -v sha256sum >/dev/null 2>&1; then h() { sha256sum; }; "
    "elif command -v openssl >/dev/null 2>&1; then h() { openssl dgst -sha256 -r; }; "
    "elif command -v python3 >/dev/null 2>&1; then h() { python3 -c "
    + shlex.quote("import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
    + "; }; else h() { return 1; }; fi; "
)
# Reads the awk filter's lines: digests `S <hex> <key>` lines with the salt, sends `ERR` lines to
# stderr; exits 1 after any error line (the caller then prints nothing on stdout).
_DIGEST_LOOP = (
    "bad=; while IFS= read -r l; do case $l in "
    "'S '*) r=${l#S }; x=${r%% *}; "
    'if d=$(printf \'%s%s\' "$salt" "$x" | h) && [ -n "$d" ]; '
    'then printf \'S %s %s\\n\' "${d%% *}" "${r#* }"; '
    "else echo 'no sha256sum, openssl or python3 on this host to digest secret env values' >&2; bad=1; fi ;; "
    "'ERR '*) printf '%s\\n' \"${l#ERR }\" >&2; bad=1 ;; "
    '*) printf \'%s\\n\' "$l" ;; esac; done; [ -z "$bad" ]'
)


def redacting_inspect(salt: str, secret_keys: str, calls_command: str) -> str:
    """A shell line running ``calls_command`` (``docker ... inspect --format "$t" ...`` and
    section echoes, quoted where built) through the host-side filter. Prints the filtered
    lines, or nothing on stdout and the errors on stderr with exit 1 when any call failed other
    than "No such ...". ``salt`` prefixes every digest; ``secret_keys``: comma-separated env
    keys digested whatever their names."""
    keys = " ".join(k for k in secret_keys.split(",") if _ENV_NAME.fullmatch(k))
    return (
        f"salt={shlex.quote(salt)}; keys={shlex.quote(f' {keys} ')}; t={shlex.quote(TEMPLATE)}; "
        + _HASHER
        + "out=$({ e=$({ "
        + calls_command
        + "; } 2>&1 1>&3); printf '%s\\n' \"$e\" | grep -v -e 'No such' -e '^$' | sed 's/^/ERR /'; } 3>&1 "
        + f'| LC_ALL=C awk -v keys="$keys" {shlex.quote(INSPECT_AWK)} | {{ {_DIGEST_LOOP}; }}) || exit 1; '
        + "printf '%s\\n' \"$out\""
    )


def read_redacted(lines) -> dict[str, list]:
    """The filter's output by section: ``{"containers": [...], "image": [...]}`` with each
    object's ``Config.Env`` rebuilt from its ``E``/``S`` lines (secret ones as digests)."""
    sections: dict[str, list] = {}
    current: list | None = None
    obj: dict | None = None
    for line in lines:
        if line.startswith(SECTION):
            name = line[len(SECTION) :].strip().partition(" ")[0]
            current = sections.setdefault(name, [])
            obj = None
        elif line.startswith("O ") and current is not None:
            obj = json.loads(line[2:])
            if isinstance(obj.get("Config"), dict):
                obj["Config"]["Env"] = []
            current.append(obj)
        elif line.startswith(("E ", "S ")) and obj is not None and isinstance(obj.get("Config"), dict):
            if line.startswith("E "):
                entry = json.loads(line[2:])
            else:
                digest, _, key = line[2:].partition(" ")
                entry = json.loads('"' + key + '"') + "=" + REDACTED + digest
            obj["Config"]["Env"].append(entry)
    return sections


class ContainerInspect(FactBase):
    """
    `docker inspect` of a container, of its kept previous copy and of an image: one remote
    command running two `docker` CLI calls (each CLI start costs the host a few tens of ms),
    filtered on the host (tasks/core/redact.py): env values that are secret by name, by
    ``secret_keys`` (comma-separated) or by their look come back as ``KEY=***sha256:<hex>``,
    digested with the container's name as salt; URL passwords as ``***``.

    Returns ``{"container": {...} | None, "previous": {...} | None, "image": {...} | None}``.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, container, image, secret_keys=""):
        # `docker container inspect A B` prints the ones that exist and exits 1 when one is
        # missing; the image is asked by type, so a like-named container cannot answer. "No such
        # ..." is an answer; any other error (engine down, no permission) fails the fact with
        # only the errors shown, so that a plan never says "create" for a container it could
        # not see, and a failure never echoes what was read.
        names = f"{shlex.quote(container)} {shlex.quote(container + PREVIOUS_SUFFIX)}"
        header = shlex.quote(f"{SECTION}containers {container}")
        calls = (
            f'echo {header}; docker container inspect --format "$t" -- {names}; '
            f"echo '{SECTION}image'; docker image inspect --format \"$t\" -- {shlex.quote(image)}"
        )
        return redacting_inspect(container, secret_keys, calls)

    def process(self, output):
        container = ""
        for line in output:
            if line.startswith(f"{SECTION}containers "):
                container = line[len(f"{SECTION}containers ") :].strip()
        found = read_redacted(output)
        by_name = {item.get("Name", "").lstrip("/"): item for item in found.get("containers", [])}
        images = found.get("image", [])
        return {
            "container": by_name.get(container),
            "previous": by_name.get(container + PREVIOUS_SUFFIX),
            "image": images[0] if images else None,
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
            f"docker run --rm --network none --entrypoint sh -- {shlex.quote(image)} -c "
            f"{shlex.quote(probe)} 2>&1 || true"
        )

    def process(self, output):
        for line in output:
            if line.startswith("version "):
                return line.split(" ", 1)[1].strip()
        return None
