"""The base of every settings block: strict pydantic models, parsed once per host.

A block is the mapping under one host-data key (``mlflow``, ``cleanup``, ...). Its model holds
the defaults (the only place they are written), validates types and rules, and refuses unknown
keys with a did-you-mean. Every problem comes back at once as one ``SettingsError`` whose lines
name host, block and key, never a value that could be a secret.

What every block gets from :class:`Block`, whatever its fields say:

- strict types: ``"no"``, ``0`` or ``1`` is not a boolean, ``"2"`` or ``2.0`` not a whole
  number, NaN and infinity not numbers; a list is taken where a field declares a tuple;
- no control character (NUL, newline, carriage return, escape, ...) and at most
  ``MAX_TEXT`` characters in any string, in any key or value, nested or not: strings end up in
  command lines, unit files, crontabs, SQL and logs (a field named in ``free_text`` may hold
  newlines and tabs);
- errors that are one line each (control characters shown escaped), name the key path
  (``db_roles[2].name``), say which type was given, and never show a value under a key that
  looks like a secret, nor the password of a URL.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, TypeVar

from annotated_types import GroupedMetadata
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from tasks.core import quoting
from tasks.settings.errors import SettingsError
from tasks.settings.types import looks_secret

M = TypeVar("M", bound=BaseModel)

# Characters no setting may hold: C0 and C1 controls, DEL, and the Unicode line and paragraph
# separators (a newline to some readers). ``free_text`` fields may hold newlines and tabs.
# One rule for the settings and the renderers (tasks/core/quoting.py).
CONTROL_RE = quoting.CONTROL_RE
FREE_TEXT_CONTROL_RE = quoting.TEXT_CONTROL_RE
MAX_TEXT = 4096  # characters in one string: a name, a path, a command line, a key line
MAX_FREE_TEXT = 65536
MAX_DEPTH = 32  # nesting of lists and mappings inside one value


def control_char(text: str, free_text: bool = False) -> str | None:
    """The first control character in ``text``, as ``U+000A``, or None."""
    found = (FREE_TEXT_CONTROL_RE if free_text else CONTROL_RE).search(text)
    return f"U+{ord(found[0]):04X}" if found else None


def key_path(where: str, key: Any) -> str:
    """``where.key`` for a plain name, else ``where['odd key']`` (repr escapes control
    characters, so the path stays on one line)."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_][\w-]*", key):
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


def text_problems(value: Any, where: str, free_text: bool = False, depth: int = 0) -> list[str]:
    """``where: problem`` for each string in ``value`` (keys and values, nested) holding a
    control character or longer than the limit; never shows the string."""
    limit = MAX_FREE_TEXT if free_text else MAX_TEXT
    if depth > MAX_DEPTH:
        return [f"{where}: nested more than {MAX_DEPTH} levels deep"]
    if isinstance(value, str):
        bad = control_char(value, free_text)
        if bad:
            return [f"{where}: contains a control character ({bad})"]
        if len(value) > limit:
            return [f"{where}: longer than {limit} characters"]
        return []
    if isinstance(value, Block):
        return []  # validated on its own
    if isinstance(value, BaseModel):
        value = dict(value)
    problems: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner = key_path(where, key)
            if isinstance(key, str):
                problems += [f"{inner}: the name {p.partition(': ')[2]}" for p in text_problems(key, inner)]
            problems += text_problems(item, inner, free_text, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            problems += text_problems(item, f"{where}[{index}]", free_text, depth + 1)
    return problems


def _declares_tuple(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_declares_tuple(arg) for arg in typing.get_args(annotation))
    return False


class Block(BaseModel):
    """A settings block: unknown keys refused, types strict, strings free of control
    characters, values frozen once read."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        validate_default=False,
        arbitrary_types_allowed=False,
        hide_input_in_errors=True,
    )

    # Fields whose strings may span lines (a compose document): newlines and tabs allowed.
    free_text: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _as_written(cls, data: Any) -> Any:
        """Before any field is read: no control character or over-long string anywhere in the
        values (nothing else sees, echoes or acts on one); then the lists host data writes
        become tuples where a field declares one (strict mode takes no list for a tuple)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        problems = []
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key not in data:
                continue
            problems += text_problems(data[key], key, free_text=name in cls.free_text)
            if isinstance(data[key], list) and _declares_tuple(field.annotation):
                data[key] = tuple(data[key])
        if problems:
            raise ValueError("\n".join(problems))
        return data


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item == "[key]":
            parts[-1:] = [f"{parts[-1]} (the name)"] if parts else []
        elif not str(item).startswith(("function-", "constrained-")):
            last = parts.pop() if parts else ""
            parts.append(key_path(last, item))
    return ".".join(parts)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``loc``, for did-you-mean."""
    current: Any = model
    for item in loc[:-1]:
        if isinstance(item, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        # A field may be written under its alias (``schema``, ``db_roles``): match either.
        field = next((f for name, f in current.model_fields.items() if str(item) in (name, f.alias)), None)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            inner = getattr(candidate, "__args__", None)
            for c in (candidate, *(inner or ())):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    current = c
                    break
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


# Pydantic's wording for the common cases, said the way the rest of the tool says it. Inputs are
# never echoed here (only their type): a password pasted into the wrong key must not reach a log.
_FRIENDLY = {
    "int_type": lambda ctx: "is not a whole number",
    "int_parsing": lambda ctx: "is not a whole number",
    "int_from_float": lambda ctx: "is not a whole number",
    "float_type": lambda ctx: "is not a number",
    "float_parsing": lambda ctx: "is not a number",
    "finite_number": lambda ctx: "must be a finite number",
    "bool_type": lambda ctx: "is not true/false",
    "bool_parsing": lambda ctx: "is not true/false",
    "string_type": lambda ctx: "is not a string",
    "string_too_short": lambda ctx: "must be a non-empty string",
    "string_too_long": lambda ctx: f"must be at most {ctx.get('max_length')} characters",
    "greater_than_equal": lambda ctx: f"must be >= {ctx.get('ge')}",
    "greater_than": lambda ctx: f"must be > {ctx.get('gt')}",
    "less_than_equal": lambda ctx: f"must be <= {ctx.get('le')}",
    "less_than": lambda ctx: f"must be < {ctx.get('lt')}",
    "literal_error": lambda ctx: f"must be one of {ctx.get('expected', '').replace(' or ', ', ')}".replace(
        "'", ""
    ),
    "missing": lambda ctx: "is required",
    "dict_type": lambda ctx: "expected a mapping",
    "list_type": lambda ctx: "expected a list",
    "tuple_type": lambda ctx: "expected a list",
    "model_type": lambda ctx: "expected a mapping",
    "model_attributes_type": lambda ctx: "expected a mapping",
}
# Errors about the input's type also say which type was given (never the value).
_SAYS_TYPE = {"int_type", "float_type", "bool_type", "string_type", "dict_type", "list_type",
              "tuple_type", "model_type", "model_attributes_type"}  # fmt: skip


def type_name(value: Any) -> str:
    """How a wrong value's type is named in errors: ``list``, ``str``, ``None``."""
    return "None" if value is None else type(value).__name__


class Pattern(GroupedMetadata):
    """``Annotated[str, Pattern(regex, hint)]``: a string matching ``regex``; a mismatch says
    ``'x' is not valid (hint)``. Pydantic unpacks this grouped metadata into the constraints below."""

    def __init__(self, regex: str, hint: str):
        self.regex, self.hint = regex, hint
        self._compiled = re.compile(regex)

    def _check(self, value: str) -> str:
        if not self._compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not valid ({self.hint})")
        return value

    def __iter__(self) -> Iterator[object]:
        yield from StringConstraints(min_length=1)
        yield AfterValidator(self._check)
        yield WithJsonSchema({"type": "string", "pattern": f"^(?:{self.regex})$", "description": self.hint})


def problems_of(model: type[BaseModel], error: ValidationError, prefix: str) -> list[str]:
    """One line per problem: ``block.key: message`` (did-you-mean for unknown keys)."""
    lines = []
    for item in error.errors(include_input=True, include_url=False):
        loc = tuple(item["loc"])
        where = _location(prefix, loc)
        if item["type"] == "extra_forbidden":
            known = _known_keys(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"{where}: unknown setting{hint} (known: {', '.join(known)})")
            continue
        friendly = _FRIENDLY.get(item["type"])
        message = friendly(item.get("ctx") or {}) if friendly else item["msg"]
        if item["type"] in _SAYS_TYPE:
            message += f", got {type_name(item.get('input'))}"
        for noise in ("Value error, ", "Assertion failed, "):
            message = message.replace(noise, "")
        lines.extend(_hidden(line, item.get("input")) for line in _located(prefix, loc, message))
    return lines


_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    """The string values in ``value``, nested; not mapping keys, and not a secret *source*
    (``{"env": "VAR"}``, ``{"file": "/path"}``: where a secret is, which errors may say)."""
    if depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        if _names_a_source(value):
            return
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _strings(item, depth + 1)


def _names_a_source(value: Mapping[Any, Any]) -> bool:
    """``{"env": "VAR"}`` or ``{"file": "/path"}`` with a plausible name: where a secret is,
    which an error may say (anything else there may be the secret itself, pasted)."""
    if len(value) != 1:
        return False
    ((kind, where),) = value.items()
    return isinstance(where, str) and (
        (kind == "env" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", where) is not None)
        or (kind == "file" and where.startswith(("/", "~")) and " " not in where)
    )


def _hidden(line: str, given: Any) -> str:
    """``line`` without a URL's password, and without any string of the value given when the key
    path looks like a secret's (``superuser_password``, ``env.DB_PASSWORD``, ``secret_env``)."""
    line = _URL_PASSWORD.sub(r"\g<scheme>:***@", line)
    key = line.partition(": ")[0]
    if not any(looks_secret(part) for part in re.split(r"[.\[\]' ]+", key) if part):
        return line
    text = line[len(key) :]
    for secret in sorted(set(_strings(given)), key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(repr(secret), "'***'").replace(secret, "***")
    return key + text


_KEYED = re.compile(r"(?P<key>[A-Za-z_](?:[^\s:\[]|\[[^\]]*\])*): (?P<text>.+)", re.S)


def _located(prefix: str, loc: tuple[Any, ...], message: str) -> list[str]:
    """A validator may name finer keys itself: ``"env.X: text\\nenv.Y: text"`` from the field
    ``env``, or ``"memory_reservation: text"`` from a model check. Each becomes its own line at
    that key; any other message stays at ``loc``."""
    field_level = bool(loc) and isinstance(loc[-1], str)
    parent = loc[:-1] if field_level else loc
    out = []
    for part in message.split("\n"):
        match = _KEYED.fullmatch(part)
        head = match["key"].split(".")[0].split("[")[0] if match else None
        if match and (not field_level or head == loc[-1]):
            out.append(f"{_location(prefix, parent)}.{match['key']}: {match['text']}".lstrip("."))
        else:
            out = []
            break
    return out or [f"{_location(prefix, loc)}: {message}" if _location(prefix, loc) else message]


def parse_block(model: type[M], host_name: str, block: str, *layers: Mapping[str, Any] | None) -> M:
    """Validate ``layers`` merged key by key (later wins) as ``model``; ``SettingsError`` if bad.

    The layers are what the operator wrote: group-wide values (``<block>_defaults`` in their
    group data, if any), then the host's own ``<block>`` mapping."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise SettingsError(host_name, [f"{block}: expected a mapping, got {type_name(layer)}"])
        merged.update(layer)
    bad_keys = [key for key in merged if not isinstance(key, str)]
    if bad_keys:
        raise SettingsError(
            host_name, [f"{block}: setting names must be strings, got {type_name(bad_keys[0])}"]
        )
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(host_name, problems_of(model, exc, block)) from None
    except SettingsError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        # A validator tripped over a value of a shape nobody foresaw: still one line, no traceback
        # (the exception's text may hold the value, so only its type is said).
        raise SettingsError(
            host_name, [f"{block or 'settings'}: could not be read ({type(exc).__name__}); check its values"]
        ) from None
