"""
ruamel.yaml round trip helpers for editing a user's YAML file in place (tasks/core/compose.py):
read and write with the file's own indentation, tell an entry written here from one inherited
through a merge key (``<<: *common``) or shared through an anchor, and keep comment lines where
they belong when entries are added or removed.

ruamel.yaml attaches the comment lines between two entries to the deepest last value before
them (``CommentToken`` in the container's ``.ca.items``); the text of such a token is the
end-of-line comment of that value, then the lines that follow it. An entry appended after it
would land below those lines (under a comment about the next service, say): ``take_trailing``
detaches the lines after the end-of-line comment and ``put_trailing`` puts them back after the
new last entry.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken

CONTAINERS = (CommentedMap, CommentedSeq)
Shared = Callable[[Any], bool]


def round_trip() -> YAML:
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never fold a long line
    return rt


# -- merge keys and anchors ---------------------------------------------------------------------


def own_keys(node: CommentedMap) -> list[Any]:
    """The keys written in this mapping, in order (not those a merge key brings)."""
    return [key for key, _ in node.non_merged_items()]


def merge_sources(node: CommentedMap) -> Iterator[CommentedMap]:
    for source in getattr(node, "_yaml_merge", None) or ():
        yield source[1] if isinstance(source, tuple) else source  # (pos, map) in older 0.18


def inherits(node: CommentedMap, key: Any) -> bool:
    """A merge key of ``node`` brings ``key`` (removing the own one would bring it back)."""
    return any(key in source for source in merge_sources(node))


def _merge_pos(node: CommentedMap) -> int | None:
    merge = getattr(node, "_yaml_merge", None)
    return getattr(merge, "merge_pos", None) if merge else None


def ref_counts(root: Any) -> Counter[int]:
    """How many places refer to each mapping or list (by id): more than one means an anchor
    shares it (an alias, or a merge key)."""
    counts: Counter[int] = Counter()
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, CommentedMap):
            children = [v for _, v in node.non_merged_items()] + list(merge_sources(node))
        elif isinstance(node, CommentedSeq):
            children = list(node)
        else:
            continue
        for child in children:
            if isinstance(child, CONTAINERS):
                counts[id(child)] += 1
                if counts[id(child)] == 1:
                    stack.append(child)
    return counts


def plain(value: Any) -> Any:
    """Plain Python data: dicts (merge keys resolved), lists, str, int, float, bool, None."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def unshared_copy(node: Any) -> Any:
    """A deep copy without anchors and comments, merge keys resolved, flow style kept."""
    if isinstance(node, CommentedMap):
        new: Any = CommentedMap((k, unshared_copy(v)) for k, v in node.items())
    elif isinstance(node, CommentedSeq):
        new = CommentedSeq(unshared_copy(v) for v in node)
    else:
        anchor = getattr(node, "anchor", None)
        return node if getattr(anchor, "value", None) is None else plain(node)
    if node.fa.flow_style():
        new.fa.set_flow_style()
    return new


# -- comment lines between entries --------------------------------------------------------------


def _block(value: Any, shared: Shared) -> bool:
    """A non-empty block mapping or list of its own: the comments after it live inside it."""
    return isinstance(value, CONTAINERS) and bool(value) and not value.fa.flow_style() and not shared(value)


def _last_slot(node: Any, shared: Shared) -> tuple[Any, Any] | None:
    """(container, key) whose comment token holds the lines after ``node``'s last entry."""
    if isinstance(node, CommentedMap):
        keys = own_keys(node)
        merge_pos = _merge_pos(node)
        if not keys or (merge_pos is not None and merge_pos >= len(keys)):
            return None  # empty, or `<<:` last: ruamel keeps those lines with what follows
        key: Any = keys[-1]
    elif isinstance(node, CommentedSeq):
        if not node:
            return None
        key = len(node) - 1
    else:
        return None
    if _block(node[key], shared):
        inner = _last_slot(node[key], shared)
        if inner is not None:
            return inner
    return node, key


def _index(container: Any) -> int:
    return 2 if isinstance(container, CommentedMap) else 0


def token(container: Any, key: Any) -> CommentToken | None:
    entry = container.ca.items.get(key)
    return entry[_index(container)] if entry else None


def _split(tok: CommentToken | None) -> str:
    """Cut the lines after the end-of-line comment off ``tok``; return them."""
    if tok is None or "\n" not in tok.value:
        return ""
    first, rest = tok.value.split("\n", 1)
    tok.value = first + "\n"
    return rest


def _append_to(container: Any, key: Any, rest: str) -> None:
    tok = token(container, key)
    if tok is not None:
        tok.value = tok.value + ("" if tok.value.endswith("\n") else "\n") + rest
        return
    entry = container.ca.items.setdefault(key, [None, None, None, None])
    entry[_index(container)] = CommentToken("\n" + rest, CommentMark(0), None)


def take_trailing(node: Any, shared: Shared) -> str:
    """Detach the comment lines after ``node``'s last entry (its end-of-line comment stays)."""
    slot = _last_slot(node, shared)
    return _split(token(*slot)) if slot else ""


def put_trailing(node: Any, rest: str, shared: Shared) -> bool:
    """Put comment lines after ``node``'s last entry; False when it has none to carry them."""
    if not rest:
        return True
    slot = _last_slot(node, shared)
    if slot is None:
        return False
    _append_to(*slot, rest)
    return True


def take_entry_trailing(parent: Any, key: Any, shared: Shared) -> str:
    """Detach the comment lines after one entry of ``parent`` (before the next one)."""
    value = parent[key]
    if _block(value, shared):
        slot = _last_slot(value, shared)
        if slot is not None:
            return _split(token(*slot))
    return _split(token(parent, key))


def put_entry_trailing(parent: Any, key: Any, rest: str, shared: Shared) -> None:
    """Put comment lines after one entry of ``parent``."""
    if rest and not (_block(parent[key], shared) and put_trailing(parent[key], rest, shared)):
        _append_to(parent, key, rest)


def take_leading(node: Any, shared: Shared) -> str:
    """Detach the comment lines before the first entry of a block mapping or list."""
    if not _block(node, shared) or not node.ca.comment or not node.ca.comment[1]:
        return ""
    # A leading token's first line starts at its column, not with its indentation.
    text = "".join(" " * tok.column + tok.value for tok in node.ca.comment[1])
    node.ca.comment[1] = []
    return text


def put_leading(node: Any, rest: str) -> None:
    """Put comment lines before ``node``'s first entry."""
    if not rest:
        return
    tok = CommentToken(rest, CommentMark(0), None)
    if node.ca.comment is None:
        node.ca.comment = [None, [tok]]
    elif node.ca.comment[1] is None:
        node.ca.comment[1] = [tok]
    else:
        node.ca.comment[1].insert(0, tok)


def drop_blank_token(parent: CommentedMap, key: Any) -> str:
    """For a scalar (or empty) value about to become a block: the blank lines after ``key:``
    go after the block, not between the key and it."""
    tok = token(parent, key)
    if tok is None or tok.value.strip():
        return ""
    parent.ca.items[key][2] = None
    return tok.value[1:]


# -- the file's layout ----------------------------------------------------------------------------

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<dash>(?:- +)*)[^\s#-][^#]*?:\s*(?:#.*)?$")
_ITEM = re.compile(r"^(?P<indent> *)-(?P<gap> +)\S")


def guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) for ruamel's ``indent()``, the most common in the file:
    ``key:\\n  - a`` is (2, 4, 2), ``key:\\n- a`` is (2, 2, 0)."""
    mappings: Counter[int] = Counter()
    sequences: Counter[tuple[int, int]] = Counter()
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for line, after in zip(lines, lines[1:], strict=False):
        key = _KEY_LINE.match(line)
        if not key:
            continue
        column = len(key["indent"]) + len(key["dash"])
        item = _ITEM.match(after)
        if item:
            offset = len(item["indent"]) - column
            if offset >= 0:
                sequences[(offset + 1 + len(item["gap"]), offset)] += 1
            continue
        step = len(after) - len(after.lstrip(" ")) - column
        if step > 0:
            mappings[step] += 1
    mapping = mappings.most_common(1)[0][0] if mappings else 2
    # No list in the file: items indented under their key, as compose's own examples write them.
    sequence, offset = sequences.most_common(1)[0][0] if sequences else (mapping + 2, mapping)
    return mapping, max(sequence, offset + 2), offset


def dump(rt: YAML, doc: Any, text: str) -> str:
    """``doc`` as YAML text laid out as ``text`` was: indentation, ``---``, line ends."""
    mapping, sequence, offset = guess_indent(text)
    rt.indent(mapping=mapping, sequence=sequence, offset=offset)
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    rt.explicit_start = first.rstrip() == "---" or first.startswith("--- ")
    out = io.StringIO()
    rt.dump(doc, out)
    new = out.getvalue()
    return new.replace("\n", "\r\n") if "\r\n" in text else new
