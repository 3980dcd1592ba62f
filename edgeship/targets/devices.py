"""Device profiles: TOML files in `targets/devices/` (or a user's own path)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

from edgeship.backends import RUNTIMES
from edgeship.errors import ConfigError, unknown_name

BUILTIN = Path(__file__).parent / "devices"
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    os: str
    abi: str
    cores: int
    isa: tuple[str, ...]
    runtimes: tuple[str, ...]
    precisions: tuple[str, ...] = PRECISIONS
    recipe: str = "int8"
    threads: int = 4
    reach: str = "local"
    clusters: tuple[str, ...] = ()  # core clusters, fastest first: what threads should stay on
    why: str = ""  # why these runtimes, recipe and threads fit this device
    address: str | None = None  # ssh://user@host[:port] or adb://SERIAL: where `edgeship bench --device` goes
    python: str | None = None  # the Python on the device that runs edgeship's runner
    benchmark_tools: dict = dataclasses.field(default_factory=dict)  # runtime -> local path of its tool binary

    def __post_init__(self) -> None:
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad or not self.runtimes:
            raise ConfigError(f"device {self.name!r}: runtimes {bad or '[]'} are not valid; "
                              f"choose from {', '.join(RUNTIMES)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ConfigError(f"device {self.name!r}: precisions {bad or '[]'} are not valid; "
                              f"choose from {', '.join(PRECISIONS)}")
        if self.address is not None and not self.address.startswith(("ssh://", "adb://")):
            raise ConfigError(f"device {self.name!r}: address {self.address!r} is not ssh://user@host[:port] "
                              "or adb://SERIAL")
        bad = sorted(set(self.benchmark_tools) - set(RUNTIMES))
        if bad:
            raise ConfigError(f"device {self.name!r}: benchmark_tools for unknown runtime(s) {', '.join(bad)}; "
                              f"choose from {', '.join(RUNTIMES)}")
        if self.threads < 1 or self.cores < 1:
            raise ConfigError(f"device {self.name!r}: threads and cores must be at least 1")

    def host_threads(self) -> int:
        """Threads used when timing on this machine: the device's count, capped by local cores."""
        return max(1, min(self.threads, os.cpu_count() or 1))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _from_file(path: Path) -> Device:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the device profile ({exc}); fix the TOML") from exc
    valid = {f.name for f in dataclasses.fields(Device)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    missing = sorted(f.name for f in dataclasses.fields(Device)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                     and f.name not in data and f.name != "name")
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(missing)}; add them to the profile")
    data.setdefault("name", path.stem)
    try:
        return Device(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}; fix the profile") from exc


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.toml"))


def load_device(name_or_path: str) -> Device:
    """A built-in profile by name, or a user's profile by path to a .toml file."""
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"device profile {path} does not exist; check the path")
        return _from_file(path)
    path = BUILTIN / f"{name_or_path}.toml"
    if not path.is_file():
        raise unknown_name("target", name_or_path, builtin_names())
    return _from_file(path)


def all_devices() -> list[Device]:
    return [load_device(n) for n in builtin_names()]
