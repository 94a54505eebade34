#!/usr/bin/env bash
# Installs what virtcontainers-rs needs for its demo and tests, and only what
# is missing: `apt-get update` runs at most once, and a machine that already
# has everything is left untouched.
set -euo pipefail

# Debian package -> why we need it.
packages=(
  qemu-system-x86     # the VMM (qemu-system-x86_64)
  linux-image-amd64   # the guest kernel and its modules
  busybox-static      # the container rootfs used by the demo and tests
  erofs-utils         # mkfs.erofs, for EROFS layer tests
  e2fsprogs           # mkfs.ext4 and debugfs, for the device manager's block-volume VM test
  cpio                # inspecting initramfs images by hand
  libseccomp-dev      # libseccomp.a for the static guest agent (seccomp profiles), and virtiofsd (below)
  runc                # the reference runtime of the guest agent's side-by-side tests
  libcap-ng-dev       # building virtiofsd (below)
  containernetworking-plugins  # CNI bridge + host-local in /usr/lib/cni: the network tests' pod namespaces, `ctr run --cni` in the shim's tests
  iproute2            # ip and tc, to look into the network tests' namespaces
  binutils            # objcopy: the cgroups crate's test binary, stripped, runs in a guest VM (cgroup v2)
  containerd          # containerd 1.6 and ctr: the shim's tests drive containerd-shim-vc-v2 through them
)

# virtiofsd (virtio-fs) is not packaged for Debian 12: built from crates.io.
VIRTIOFSD_VERSION=1.14.0
VIRTIOFSD_ROOT=/usr/local

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    sudo="sudo"
  else
    echo "prerequisites: not root and no sudo: install them by hand" >&2
    exit 1
  fi
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "prerequisites: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VIRTIOFSD_ROOT/bin/virtiofsd" ]; then
  echo "prerequisites: building virtiofsd $VIRTIOFSD_VERSION from crates.io"
  $sudo env "PATH=$PATH" cargo install virtiofsd --version "$VIRTIOFSD_VERSION" --locked \
    --root "$VIRTIOFSD_ROOT"
fi

echo "prerequisites: all present"
