#!/usr/bin/env python3
"""A command-level test double of adb (no Android device is available to the test suite).

It understands the commands edgeship uses: `[-s SERIAL] get-state | push SRC DST | pull SRC DST | shell CMD`.
The "device" is the folder $FAKE_ADB_ROOT: device paths are mapped into it, and `shell` runs the command
with this machine's sh (so a runner started there uses this machine's real runtimes), with `getprop`
answering from $FAKE_ADB_MODEL. $FAKE_ADB_SERIALS lists the attached serials; every call is appended to
$FAKE_ADB_LOG as a JSON line.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ["FAKE_ADB_ROOT"])
SERIALS = os.environ.get("FAKE_ADB_SERIALS", "emulator-5554").split(",")


def on_device(path: str) -> Path:
    return ROOT / path.lstrip("/")


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_ADB_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    serial = None
    if argv[:1] == ["-s"]:
        serial, argv = argv[1], argv[2:]
    attached = [s for s in SERIALS if s]
    if serial is None and len(attached) != 1:
        print("error: more than one device/emulator" if attached else "error: no devices/emulators found",
              file=sys.stderr)
        return 1
    if (serial or attached[0]) not in attached:
        print(f"error: device '{serial}' not found", file=sys.stderr)
        return 1
    command, args = argv[0], argv[1:]
    if command == "get-state":
        print("device")
        return 0
    if command == "push":
        dest = on_device(args[1])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args[0], dest)
        print(f"{args[0]}: 1 file pushed")
        return 0
    if command == "pull":
        source = on_device(args[0])
        if not source.exists():
            print(f"adb: error: remote object '{args[0]}' does not exist", file=sys.stderr)
            return 1
        shutil.copyfile(source, args[1])
        return 0
    if command == "shell":
        model = os.environ.get("FAKE_ADB_MODEL", "test double")
        script = args[0].replace("/data/local/tmp", str(ROOT / "data/local/tmp"))
        getprop = (f'getprop() {{ case "$1" in ro.product.model) echo "{model}";; '
                   'ro.product.cpu.abi) echo arm64-v8a;; esac; }; ')
        return subprocess.run(["sh", "-c", getprop + script], cwd=ROOT).returncode
    print(f"fake adb: unsupported command {command}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
