"""The base of every settings block: strict pydantic models, parsed once per host.

A block is the mapping under one host-data key (``mlflow``, ``cleanup``, ...). Its model holds
the defaults (the only place they are written), validates types and rules, and refuses unknown
keys with a did-you-mean. Every problem comes back at once as one ``SettingsError`` whose lines
name host, block and key, never a value that could be a secret.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from annotated_types import GroupedMetadata
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError, WithJsonSchema

from tasks.settings.errors import SettingsError

M = TypeVar("M", bound=BaseModel)


class Block(BaseModel):
    """A settings block: unknown keys refused, values frozen once read."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=False,
        validate_default=False,
        arbitrary_types_allowed=False,
        hide_input_in_errors=True,
    )


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif not str(item).startswith(("function-", "constrained-")):
            parts.append(str(item))
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
# never echoed here: a password pasted into the wrong key must not reach a log.
_FRIENDLY = {
    "int_type": lambda ctx: "is not a whole number",
    "int_parsing": lambda ctx: "is not a whole number",
    "int_from_float": lambda ctx: "is not a whole number",
    "float_type": lambda ctx: "is not a number",
    "float_parsing": lambda ctx: "is not a number",
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
    for item in error.errors(include_input=False, include_url=False):
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
        for noise in ("Value error, ", "Assertion failed, "):
            message = message.replace(noise, "")
        lines.extend(_located(prefix, loc, message))
    return lines


_KEYED = re.compile(r"(?P<key>[A-Za-z_][\w.\[\]-]*): (?P<text>.+)", re.S)


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
            raise SettingsError(
                host_name, [f"{block}: expected a mapping of settings, got {type(layer).__name__}"]
            )
        merged.update(layer)
    bad_keys = [key for key in merged if not isinstance(key, str)]
    if bad_keys:
        raise SettingsError(host_name, [f"{block}: setting names must be strings, got {bad_keys[0]!r}"])
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(host_name, problems_of(model, exc, block)) from None
