"""Lazy registries: a name maps to `module:Class`, imported only when that name is used, so that
listing targets or printing help never imports a runtime SDK."""

from __future__ import annotations

import importlib

from edgeship.errors import unknown_name


def instantiate(registry: dict[str, str], kind: str, name: str):
    """A new instance of the class registered under `name`; an unknown name lists the valid ones."""
    if name not in registry:
        raise unknown_name(kind, name, tuple(registry))
    module, _, cls = registry[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
