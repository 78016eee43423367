"""
Patch one service of a user's compose file, round trip: only the managed keys change.

The file is read and written with ruamel.yaml (tasks/core/yaml_roundtrip.py), so comments,
anchors and aliases, merge keys (``<<: *common``), key order, quoting and the file's
indentation stay as they were. Values are compared by meaning (``1g`` == ``1024m`` ==
``1073741824``, a string command == its list form, ``restart: no`` == ``"no"``): when nothing
differs the text is returned unchanged, byte for byte. Patching the result again changes nothing.

A key the service inherits through a merge key, or a mapping an anchor shares with other
services, is never changed where it is written (that would change the other services too): the
service gets its own copy and the copy is changed. A new value keeps the quotes of the one it
replaces; a new string that YAML 1.1 (compose v1 reads YAML 1.1) would take for a number, a bool
or null is quoted, in the quotes the file uses most.

Do not pass secret values here: a compose file is plaintext on disk. For a secret key pass
``"${KEY}"`` so compose reads it from its environment at ``up`` time.

Long because each managed key has its own rules (what equal means, its forms, where it may be
inherited from) and they share one patcher; the YAML mechanics live in yaml_roundtrip.py.
"""

from __future__ import annotations

import difflib
import shlex
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    PlainScalarString,
    ScalarString,
    SingleQuotedScalarString,
)

from tasks.core import yaml_roundtrip as rtx
from tasks.core.sizes import docker_size, parse_size

_QUOTED = (DoubleQuotedScalarString, SingleQuotedScalarString)
_YAML11 = yaml.resolver.Resolver()  # resolves plain scalars as compose v1 (PyYAML) does


class ComposeError(ValueError):
    pass


@dataclass(frozen=True)
class ServicePatch:
    """What to set on one compose service; ``None`` (or empty) leaves a key alone."""

    image: str | None = None
    command: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    remove_environment: frozenset[str] = frozenset()
    memory_limit: int | None = None  # bytes; 0 removes the limit
    memory_reservation: int | None = None  # bytes; 0 removes the reservation
    restart: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    init: bool | None = None


# -- comparing by meaning ------------------------------------------------------------------------


def same_command(old: Any, new: list[str] | tuple[str, ...]) -> bool:
    """A compose ``command`` (string or list) equals the argv ``new``."""
    new = [str(x) for x in new]
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


def _yaml11(value: Any) -> Any:
    """A plain scalar as compose v1 reads it (``no`` is false there); quoted ones stay strings."""
    if isinstance(value, str) and not isinstance(value, ScalarString):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _restart(value: Any) -> str | None:
    value = _yaml11(value)
    if value is None:
        return None
    text = "no" if value is False else str(value).strip().lower()
    return "on-failure" if text == "on-failure:0" else text


def _text(value: Any) -> str | None:
    """An env or label value as a string: ``2`` == ``"2"``; ``KEY:`` (no value) is None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _needs_quotes(value: str) -> bool:
    return _YAML11.resolve(yaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str"


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    for kind, name in ((Mapping, "a mapping"), (list, "a list"), (str, "a string"), (bool, "a bool")):
        if isinstance(value, kind):
            return name
    name = type(value).__name__.removeprefix("Scalar").lower()
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


# -- reading the file ----------------------------------------------------------------------------


def _load(rt: YAML, text: str) -> Any:
    try:
        return rt.load(text.replace("\r\n", "\n"))
    except YAMLError as exc:
        if isinstance(exc, MarkedYAMLError) and exc.problem:
            mark = exc.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            reason = f"{exc.problem}{where}"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ComposeError(f"compose file is not valid YAML: {reason}") from exc


def _service(doc: Any, service: str) -> CommentedMap:
    services = doc.get("services") if isinstance(doc, CommentedMap) else None
    if not isinstance(services, CommentedMap):
        raise ComposeError("compose file has no 'services' mapping")
    if service not in services:
        known = ", ".join(map(str, services)) or "none"
        raise ComposeError(f"service {service!r} is not in the compose file (services: {known})")
    svc = services[service]
    if not isinstance(svc, CommentedMap):
        raise ComposeError(f"service {service!r} is {_kind(svc)}, expected a mapping")
    return svc


def service_view(yaml_text: str, service: str) -> dict:
    """The service as plain Python data, merge keys resolved (scalars as YAML 1.2 reads them:
    ``restart: no`` is the string ``"no"``). Raises ComposeError."""
    return rtx.plain(_service(_load(rtx.round_trip(), yaml_text), service))


# -- the patch -------------------------------------------------------------------------------------


def _item_style(seq: Any) -> Any:
    """The first item of a list whose items are all quoted alike (new items are quoted so too)."""
    if isinstance(seq, list) and seq and len({type(item) for item in seq}) == 1:
        return seq[0]
    return None


class _Patcher:
    def __init__(self, doc: Any, svc: CommentedMap, name: str):
        self.svc, self.name = svc, name
        self.refs = rtx.ref_counts(doc)
        self.changed: list[str] = []
        version = str(doc.get("version") or "")
        self.version = version
        self.format2 = version.startswith(("1", "2"))  # compose format 2.x has no `deploy:`
        counts: Counter[type] = Counter(type(v) for v in _scalars(doc) if isinstance(v, _QUOTED))
        self.quote = max(_QUOTED, key=lambda kind: 2 * counts[kind] + (kind is DoubleQuotedScalarString))

    def shared(self, node: Any) -> bool:
        return isinstance(node, rtx.CONTAINERS) and self.refs[id(node)] > 1

    def scalar(self, value: str, like: Any = None) -> Any:
        """``value`` in the quotes of ``like`` (the value it replaces, or a sibling), else plain
        unless it needs quotes."""
        if isinstance(like, _QUOTED):
            return type(like)(value)
        # PlainScalarString: ruamel would otherwise give it the quotes of an inherited value.
        return self.quote(value) if _needs_quotes(value) else PlainScalarString(value)

    def own_value(self, key: str) -> Any:
        return self.svc[key] if key in rtx.own_keys(self.svc) else None

    # -- edits that keep anchors shared and comments in place

    def own(self, parent: CommentedMap, key: Any) -> Any:
        """``parent[key]`` as parent's own, unshared container: an inherited or anchored one is
        copied first, so the anchor and the other services keep theirs."""
        value = parent[key]
        if isinstance(value, rtx.CONTAINERS) and (key not in rtx.own_keys(parent) or self.shared(value)):
            value = rtx.unshared_copy(value)
            self.put(parent, key, value)
        return value

    def put(self, parent: CommentedMap, key: Any, value: Any) -> None:
        if key not in rtx.own_keys(parent):  # appended: the lines after the last entry stay last
            rest = rtx.take_trailing(parent, self.shared)
            parent[key] = value
            rtx.put_trailing(parent, rest, self.shared)
            return
        rest = rtx.take_entry_trailing(parent, key, self.shared)
        if isinstance(value, rtx.CONTAINERS) and not isinstance(parent[key], rtx.CONTAINERS):
            rest = rtx.drop_blank_token(parent, key) + rest
        parent[key] = value
        rtx.put_entry_trailing(parent, key, rest, self.shared)

    def delete(self, parent: Any, key: Any) -> None:
        """Remove one entry; the comment lines in and after it stay, after the entry before it
        (only its end-of-line comment goes)."""
        if isinstance(parent, CommentedMap):
            keys = rtx.own_keys(parent)
            before = keys[keys.index(key) - 1] if keys.index(key) else None
        else:
            before = key - 1 if key else None
        rest = rtx.take_leading(parent[key], self.shared) + rtx.take_entry_trailing(parent, key, self.shared)
        del parent[key]
        if before is None:
            rtx.put_leading(parent, rest)
        else:
            rtx.put_entry_trailing(parent, before, rest, self.shared)

    def remove(self, path: tuple[str, ...]) -> None:
        """Remove the key at ``path``, and the mappings that leaves empty unless they override
        an inherited one (removing those would bring the inherited value back)."""
        nodes = [self.svc]
        for key in path[:-1]:
            nodes.append(self.own(nodes[-1], key))
        depth = len(path) - 1
        while (
            depth > 0
            and rtx.own_keys(nodes[depth]) == [path[depth]]
            and not any(rtx.merge_sources(nodes[depth]))
            and not rtx.inherits(nodes[depth - 1], path[depth - 1])
        ):
            depth -= 1
        self.delete(nodes[depth], path[depth])

    def read(self, path: tuple[str, ...]) -> Any:
        """The value at ``path`` in the service (inherited ones seen), None when absent."""
        node: Any = self.svc
        for depth, key in enumerate(path):
            if node is None:
                return None
            if not isinstance(node, CommentedMap):
                where = ".".join(path[:depth])
                raise ComposeError(f"service {self.name!r}: {where} is {_kind(node)}, expected a mapping")
            node = node.get(key)
        return node

    def own_path(self, path: tuple[str, ...]) -> CommentedMap:
        """The mapping at ``path``, the service's own (created, or copied from inherited)."""
        node = self.svc
        for key in path:
            value = node.get(key)
            if value is None:
                value = CommentedMap()
                self.put(node, key, value)
            else:
                value = self.own(node, key)
            node = value
        return node

    # -- the managed keys

    def image(self, image: str) -> None:
        old = self.svc.get("image")
        if old is None or str(old) != image:
            self.put(self.svc, "image", self.scalar(image, self.own_value("image")))
            self.changed.append("image")

    def command(self, command: tuple[str, ...]) -> None:
        new = [str(part) for part in command]
        old = self.svc.get("command")
        if same_command(old, new):
            return
        value: Any
        if isinstance(old, str):  # the file's form is kept
            value = self.scalar(shlex.join(new), self.own_value("command"))
        else:
            like = _item_style(old)
            value = CommentedSeq(self.scalar(part, like) for part in new)
            if isinstance(old, CommentedSeq) and old.fa.flow_style():
                value.fa.set_flow_style()
        self.put(self.svc, "command", value)
        self.changed.append("command")

    def pairs(self, key: str, wanted: Mapping[str, str], remove: frozenset[str] = frozenset()) -> None:
        """``environment`` or ``labels``: a mapping or a list of KEY=VALUE, its form kept."""
        current = self.svc.get(key)
        remove = frozenset(remove) - set(wanted)
        if current is None:
            if wanted:
                self.put(self.svc, key, CommentedMap((k, self.scalar(v)) for k, v in wanted.items()))
                self.changed.extend(f"{key}.{k}" for k in wanted)
            return
        if isinstance(current, CommentedMap):
            self._mapping_pairs(key, current, wanted, remove)
        elif isinstance(current, CommentedSeq):
            self._list_pairs(key, current, wanted, remove)
        else:
            raise ComposeError(
                f"service {self.name!r}: {key} is {_kind(current)}, expected a mapping or a list"
            )

    def _drops_all(self, key: str, current: Any, left: int) -> bool:
        """Every entry goes and the key is the service's own: remove the key itself."""
        own = key in rtx.own_keys(self.svc) and not rtx.inherits(self.svc, key)
        return (
            own and left == 0 and not (isinstance(current, CommentedMap) and any(rtx.merge_sources(current)))
        )

    def _mapping_pairs(
        self, key: str, current: CommentedMap, wanted: Mapping[str, str], remove: frozenset
    ) -> None:
        to_set = [k for k, v in wanted.items() if k not in current or _text(current[k]) != v]
        to_drop = [k for k in current if k in remove]
        if not to_set and not to_drop:
            return
        for k in to_drop:
            if rtx.inherits(current, k):
                raise ComposeError(
                    f"service {self.name!r}: {key}.{k} comes from a merge key (<<) in {key}: remove it there by hand"
                )
        self.changed.extend(f"{key}.{k}" for k in [*to_set, *to_drop])
        if self._drops_all(key, current, len(current) - len(to_drop) + len(to_set)):
            self.delete(self.svc, key)
            return
        mapping = self.own(self.svc, key)
        for k in to_set:
            self.put(
                mapping, k, self.scalar(wanted[k], mapping.get(k) if k in rtx.own_keys(mapping) else None)
            )
        for k in to_drop:
            self.delete(mapping, k)

    def _list_pairs(
        self, key: str, current: CommentedSeq, wanted: Mapping[str, str], remove: frozenset
    ) -> None:
        entries = [str(item).partition("=") for item in current]
        to_set = [
            i
            for i, (k, sep, v) in enumerate(entries)
            if k in wanted and (not sep or v != wanted[k] or not isinstance(current[i], str))
        ]
        to_drop = [i for i, (k, _, _) in enumerate(entries) if k in remove]
        to_add = [k for k in wanted if k not in {k for k, _, _ in entries}]
        if not to_set and not to_drop and not to_add:
            return
        names = [entries[i][0] for i in to_set] + [entries[i][0] for i in to_drop] + to_add
        self.changed.extend(f"{key}.{k}" for k in dict.fromkeys(names))
        if self._drops_all(key, current, len(current) - len(to_drop) + len(to_add)):
            self.delete(self.svc, key)
            return
        seq = self.own(self.svc, key)
        like = _item_style(seq)
        for i in to_set:
            k = entries[i][0]
            seq[i] = self.scalar(f"{k}={wanted[k]}", seq[i])
        for i in reversed(to_drop):
            self.delete(seq, i)
        for k in to_add:
            rest = rtx.take_trailing(seq, self.shared)
            seq.append(self.scalar(f"{k}={wanted[k]}", like))
            rtx.put_trailing(seq, rest, self.shared)

    def memory(self, section: str, legacy: str, wanted: int) -> None:
        path = ("deploy", "resources", section)
        block = self.read(path)
        if block is not None and not isinstance(block, CommentedMap):
            raise ComposeError(
                f"service {self.name!r}: {'.'.join(path)} is {_kind(block)}, expected a mapping"
            )
        if wanted == 0:
            if block is not None and "memory" in block:
                self.remove((*path, "memory"))
                self.changed.append(".".join(path) + ".memory")
        elif not self.format2 or self.read(("deploy",)) is not None:
            old = block.get("memory") if block is not None else None
            if not _same_size(old, wanted):
                own = block is not None and "memory" in rtx.own_keys(block)
                self.put(
                    self.own_path(path), "memory", self.scalar(docker_size(wanted), old if own else None)
                )
                self.changed.append(".".join(path) + ".memory")
        # Compose refuses mem_limit that disagrees with deploy.resources: keep the legacy key equal.
        if legacy in self.svc or (self.format2 and wanted):
            old = self.svc.get(legacy)
            if wanted == 0 and legacy in rtx.own_keys(self.svc) and not rtx.inherits(self.svc, legacy):
                self.delete(self.svc, legacy)
                self.changed.append(legacy)
            elif not _same_size(old, wanted):
                value = self.scalar(docker_size(wanted), self.own_value(legacy)) if wanted else 0
                self.put(self.svc, legacy, value)
                self.changed.append(legacy)

    def restart(self, restart: str) -> None:
        if _restart(self.svc.get("restart")) != _restart(restart):
            self.put(self.svc, "restart", self.scalar(restart, self.own_value("restart")))
            self.changed.append("restart")

    def init(self, init: bool) -> None:
        if _yaml11(self.svc.get("init")) is not init:
            if init and self.version and not _init_supported(self.version):
                raise ComposeError(
                    f"service {self.name!r}: `init: true` needs compose file format 2.2+ or 3.7+, and "
                    f"this file says version {self.version!r} (docker-compose v1 would refuse the "
                    "file): raise its version, or set mlflow.init to false; nothing was changed"
                )
            self.put(self.svc, "init", init)
            self.changed.append("init")


def _init_supported(version: str) -> bool:
    """Whether compose file format ``version`` has a service's ``init`` (2.2+ and 3.7+; compose
    v2 ignores ``version``, docker-compose v1 validates against it)."""
    major, _, minor = version.strip().partition(".")
    try:
        number = (int(major), int(minor or 0))
    except ValueError:
        return True  # not a version v1 knows: let compose say what it thinks of it
    return number >= (3, 7) or (number[0] == 2 and number >= (2, 2))


def _scalars(node: Any) -> list[Any]:
    out, stack = [], [node]
    while stack:
        node = stack.pop()
        if isinstance(node, CommentedMap):
            stack.extend(v for _, v in node.non_merged_items())
        elif isinstance(node, CommentedSeq):
            stack.extend(node)
        else:
            out.append(node)
    return out


def patch_compose_service_with(
    yaml_text: str, service: str, make_patch: Callable[[dict], ServicePatch]
) -> tuple[str, list[str]]:
    """:func:`patch_compose_service` with a patch made from the service as it is
    (:func:`service_view`'s dict), for callers whose patch depends on it; one parse."""
    rt = rtx.round_trip()
    doc = _load(rt, yaml_text)
    svc = _service(doc, service)
    patch = make_patch(rtx.plain(svc))
    patcher = _Patcher(doc, svc, service)
    # The comment lines after the service (about the next one) stay after it, whatever is added.
    trailing = rtx.take_trailing(svc, patcher.shared)
    if patch.image is not None:
        patcher.image(patch.image)
    if patch.command is not None:
        patcher.command(tuple(patch.command))
    if patch.environment or patch.remove_environment:
        patcher.pairs("environment", patch.environment, patch.remove_environment)
    if patch.memory_limit is not None:
        patcher.memory("limits", "mem_limit", patch.memory_limit)
    if patch.memory_reservation is not None:
        patcher.memory("reservations", "mem_reservation", patch.memory_reservation)
    if patch.restart is not None:
        patcher.restart(patch.restart)
    if patch.labels:
        patcher.pairs("labels", patch.labels)
    if patch.init is not None:
        patcher.init(patch.init)
    if not patcher.changed:
        return yaml_text, []
    if patcher.shared(svc):
        raise ComposeError(
            f"service {service!r} is shared with other services through an anchor: changing it "
            "would change them too; nothing was changed"
        )
    rtx.put_trailing(svc, trailing, patcher.shared)
    return rtx.dump(rt, doc, yaml_text), patcher.changed


def patch_compose_service(yaml_text: str, service: str, patch: ServicePatch) -> tuple[str, list[str]]:
    """
    ``(new_text, changed)``: ``changed`` lists the dotted key paths set or removed
    (``["command", "environment.GUNICORN_CMD_ARGS", "deploy.resources.limits.memory"]``);
    when it is empty the text is returned unchanged, byte for byte. Raises ComposeError
    (not YAML, no services mapping, service missing, a key of the wrong type).
    """
    return patch_compose_service_with(yaml_text, service, lambda _view: patch)


def compose_diff(old: str, new: str, path: str) -> str:
    """Unified diff of the file before and after, for ``--dry``/``--diff``; empty when equal."""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=f"{path} (now)", tofile=f"{path} (patched)", lineterm=""
    )
    text = "\n".join(lines)
    return text + "\n" if text else ""
