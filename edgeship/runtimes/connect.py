"""A remote device by its address: ssh:// devices run edgeship's runner over SSH, adb:// devices run
either that runner or the runtimes' own benchmark tools."""

from __future__ import annotations

from pathlib import Path

from edgeship.errors import DeviceError
from edgeship.runtimes.adb import ADBDevice
from edgeship.runtimes.bench import SSHDevice


def connect(url: str, ssh_config: Path | None = None, python: str | None = None,
            tools: dict[str, Path] | None = None):
    """A remote device by address: ssh://[user@]host[:port] or adb://[SERIAL]."""
    if url.startswith("adb://"):
        return ADBDevice(url, python, tools)
    if url.startswith("ssh://"):
        if tools:
            raise DeviceError("--benchmark-tool is for adb:// devices; an ssh:// device runs the edgeship runner")
        return SSHDevice(url, ssh_config, python or "python3")
    raise DeviceError(f"device {url!r}: give ssh://[user@]host[:port], adb://SERIAL, or a device profile "
                      "name or .toml path with an `address`")
