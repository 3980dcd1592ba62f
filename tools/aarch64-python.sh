#!/usr/bin/env bash
# Build an aarch64 Python 3.11 that runs here under user-mode emulation (Debian's qemu-user-static), for
# checking artifacts on the aarch64 builds of the runtimes:
#
#     tools/aarch64-python.sh DEST        then   DEST/python3 -c 'import platform; print(platform.machine())'
#
# DEST/root is a sysroot of Debian arm64 packages (Python and the C/C++ libraries the runtime wheels link);
# DEST/python3 starts that Python under qemu. Nothing from PyPI is installed: `edgeship bench --setup`
# pushes the runtimes' aarch64 wheels to the "device" like to any other.
#
# The emulated CPU is a Neoverse-N1 (Armv8.2-A with dotprod: the Cortex-A76 class of the Raspberry Pi 5
# and of many phones' big cores); EDGESHIP_QEMU_CPU picks another of `qemu-aarch64-static -cpu help`.
# qemu 7.2 does not emulate /proc/cpuinfo for aarch64 and the runtimes' CPU detection (cpuinfo) crashes
# on the x86 one, so the sysroot carries an arm64 /proc/cpuinfo that qemu's -L prefix serves instead.
# Emulated timings are not ARM latency.
#
# Needs root the first time (adds the arm64 architecture to apt, installs qemu-user-static).
set -euo pipefail
dest=${1:?usage: tools/aarch64-python.sh DEST}
packages="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libffi8
libssl3 libbz2-1.0 liblzma5 libgcc-s1 libstdc++6 libuuid1 libcrypt1 libsqlite3-0 libncursesw6 libtinfo6"

if ! command -v qemu-aarch64-static >/dev/null; then
    apt-get install -y -qq qemu-user-static >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null; }
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
fi

mkdir -p "$(dirname "$dest")"
stage=$(mktemp -d "${dest%/}.partial-XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/debs" "$stage/root/proc"
(cd "$stage/debs" && apt-get download -qq $(for p in $packages; do echo "$p:arm64"; done) 2>/dev/null) || {
    apt-get update -qq
    (cd "$stage/debs" && apt-get download -qq $(for p in $packages; do echo "$p:arm64"; done))
}
for deb in "$stage"/debs/*.deb; do dpkg -x "$deb" "$stage/root"; done
rm -rf "$stage/debs"

for ((i = 0; i < $(nproc); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done > "$stage/root/proc/cpuinfo"

cat > "$stage/python3" <<'EOF'
#!/bin/sh
# aarch64 Python 3.11 under qemu-user; see tools/aarch64-python.sh
here=$(dirname "$(readlink -f "$0")")
cpu=${EDGESHIP_QEMU_CPU:-neoverse-n1}
export EDGESHIP_EMULATED="qemu-aarch64 -cpu $cpu"  # edgeship marks timings from here as emulated
exec qemu-aarch64-static -cpu "$cpu" -L "$here/root" "$here/root/usr/bin/python3.11" "$@"
EOF
chmod +x "$stage/python3"
"$stage/python3" -c 'import platform, ssl, zipfile; assert platform.machine() == "aarch64"'

rm -rf "$dest"
mv "$stage" "$dest"
trap - EXIT
echo "aarch64 Python ready: $dest/python3"
