"""manifest.json has a schema in the repository (edgeship/report/manifest.schema.json) that says what
each field means; the `Manifest` the export flow fills has exactly its fields, and the manifests real
exports write are valid against it (tests/test_cli.py, test_int4.py, test_bench.py call `validate`)."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from edgeship.report.manifest import SCHEMA, Manifest


def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def validate(manifest: dict) -> None:
    """Raises jsonschema.ValidationError when `manifest` is not a manifest."""
    jsonschema.validate(manifest, schema())


def test_manifest_fields_are_the_schema_fields() -> None:
    fields = {f.name for f in dataclasses.fields(Manifest)} - {"simulated", "simulated_precision"}
    assert fields == set(schema()["required"])


def test_every_field_says_what_it_means() -> None:
    s = schema()
    undescribed = [name for name, spec in s["properties"].items() if not spec.get("description")]
    undescribed += [f"artifact.{name}" for name, spec in s["$defs"]["artifact"]["properties"].items()
                    if name not in ("bytes", "sha256", "precision") and not spec.get("description")]
    assert not undescribed


def test_the_schema_refuses_what_is_not_a_manifest() -> None:
    fields = {f.name: None for f in dataclasses.fields(Manifest)}
    with pytest.raises(jsonschema.ValidationError):  # every field null: wrong types
        validate(Manifest(**fields).to_dict())
    with pytest.raises(jsonschema.ValidationError, match="unknown"):
        validate({"manifest_version": 1, "unknown": 0})
