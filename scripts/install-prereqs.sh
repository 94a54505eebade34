#!/usr/bin/env bash
# Installs the host packages virtcontainers-rs needs for its demo and tests,
# and only those that are missing: `apt-get update` runs at most once, and a
# machine that already has everything is left untouched.
set -euo pipefail

# Debian package -> why we need it.
packages=(
  qemu-system-x86     # the VMM (qemu-system-x86_64)
  linux-image-amd64   # the guest kernel and its modules
  busybox-static      # the container rootfs used by the demo and tests
  erofs-utils         # mkfs.erofs, for EROFS layer tests
  cpio                # inspecting initramfs images by hand
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "prerequisites: all present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    sudo="sudo"
  else
    echo "prerequisites: missing ${missing[*]} and not root (no sudo): install them by hand" >&2
    exit 1
  fi
fi

echo "prerequisites: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
