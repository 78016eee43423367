"""The host-data JSON Schema is generated from the models and checked in; the inventories the
project ships validate against the models."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from tasks import settings
from tasks.settings import schema

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_schema_matches_the_models():
    assert schema.SCHEMA_FILE.read_text() == schema.render(), (
        "tasks/settings/host_data.schema.json has drifted: run `python -m tasks.settings.schema`")


def test_schema_lists_every_block_and_its_defaults():
    document = json.loads(schema.SCHEMA_FILE.read_text())
    for block, model in settings.BLOCKS.items():
        if block in settings.GATHER:
            for key in settings.TOP_LEVEL_KEYS[block].values():
                assert key in document["properties"]
            continue
        assert block in document["properties"] and f"{block}_defaults" in document["properties"]
        props = document["$defs"][model.__name__]["properties"]
        assert set(props) == {f.alias or name for name, f in model.model_fields.items()}
    mlflow = document["$defs"]["MlflowSettings"]["properties"]
    assert mlflow["workers"]["default"] == 2 and mlflow["memory_limit"]["default"] == 1 << 30


def test_group_data_holds_no_defaults():
    # Defaults are written once, in the models; group data is for the operator's fleet values.
    names = {k for k in runpy.run_path(str(REPO / "inventories" / "group_data" / "all.py"))
             if not k.startswith("__")}
    assert names == set()


@pytest.mark.parametrize("index", [0, 1])
def test_production_example_validates(index):
    inventory = runpy.run_path(str(REPO / "inventories" / "production.example.py"))
    name, data = inventory["ml_hosts"][index]
    for block in settings.BLOCKS:
        if block in data:
            settings.load(block, name, data[block])
