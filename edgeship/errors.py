"""Typed errors. Every user-facing message is built here and ends with the next step to take."""

from __future__ import annotations


class EdgeshipError(Exception):
    """Base of every error the CLI turns into one line on stderr and exit code 1."""

    exit_code = 1


class ConfigError(EdgeshipError):
    """A recipe, device profile, option or output location is not usable."""


class ModelLoadError(EdgeshipError):
    """The model source could not be imported or did not give an nn.Module."""


class ExportError(EdgeshipError):
    """torch.export (or a runtime's converter) could not capture the model."""

    def __init__(self, message: str, op: str | None = None, source_line: str | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.source_line = source_line


class CalibrationError(EdgeshipError):
    """The calibration or evaluation data is missing, unreadable or does not fit the model."""


class UnsupportedOpError(EdgeshipError):
    def __init__(self, target: str, op: str, reason: str) -> None:
        super().__init__(f"{target} cannot run {op}: {reason}")
        self.target, self.op, self.reason = target, op, reason


class RuntimeFailure(EdgeshipError):
    """A runtime failed to load or run an artifact."""


class DeviceError(EdgeshipError):
    """A device could not be reached or lacks what the command needs."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    return ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(valid))}")
