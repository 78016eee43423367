"""The JSON Schema of host data, generated from the block models.

    python -m tasks.settings.schema            # rewrite tasks/settings/host_data.schema.json
    python -m tasks.settings.schema --check    # exit 1 when the checked-in file has drifted

Editors validate inventories' host data with it (a host's data is one object: each block under
its name, and ``<block>_defaults`` for fleet-wide values in group data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from tasks import settings

SCHEMA_FILE = Path(__file__).with_name("host_data.schema.json")


def host_data_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    for block, model in sorted(settings.BLOCKS.items()):
        schema = TypeAdapter(model).json_schema(ref_template="#/$defs/{model}")
        definitions.update(schema.pop("$defs", {}))
        definitions[model.__name__] = schema
        ref = {"$ref": f"#/$defs/{model.__name__}"}
        top_level = getattr(settings, "TOP_LEVEL_KEYS", {}).get(block)
        if top_level:  # a block gathered from several top-level keys (db_roles, db_grants, ...)
            for field, key in top_level.items():
                properties[key] = {"$ref": f"#/$defs/{model.__name__}/properties/{field}"}
        else:
            properties[block] = ref
            properties[f"{block}_defaults"] = {
                "description": f"fleet-wide `{block}` values (group data); a host's `{block}` wins",
                **ref,
            }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "quant-remediation host data",
        "description": "Generated from tasks/settings by `python -m tasks.settings.schema`; do not edit.",
        "type": "object",
        "properties": properties,
        "additionalProperties": True,  # pyinfra's own connection data and the operator's keys
        "$defs": dict(sorted(definitions.items())),
    }


def render() -> str:
    return json.dumps(host_data_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not SCHEMA_FILE.exists() or SCHEMA_FILE.read_text() != text:
            print(f"{SCHEMA_FILE} is out of date: run `python -m tasks.settings.schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(text)
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
