#!/usr/bin/env bash
# Installs what `make test` needs when it is missing, so that on a fresh
# Debian machine the README's two commands are all the set-up: Debian's
# packages (as root, with apt-get), then the Go tools pinned in the Makefile
# (`make tools`). Run by `make test` (target deps); quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# What each package is for:
#   protobuf-compiler            make proto-check (protoc 3.21)
#   qemu-guest-agent             the reference peer (conformance, bench)
#   qemu-system-x86, linux-image-amd64, busybox-static, cpio, kmod
#                                the VM and libvirt tests (a TCG guest)
#   iproute2                     network namespaces (cmd-network)
#   e2fsprogs, util-linux        fsfreeze on loop-mounted ext4, prlimit,
#                                setpriv (the command monitor's callers)
#   passwd                       useradd/groupadd: real unprivileged users
#   xen-utils-4.17, xenstore-utils
#                                a real oxenstored (nova over XenStore)
#   libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients
#                                the libvirt test (libvirtd started by it)
#   gcc, libc6-dev               a real LD_PRELOAD object (cmd-exec test)
#   mmdebstrap                   the Debian guest test's root filesystem
#   rpm                          reading the .rpm packages back (package test)
#   git                          versions (git describe); shared's tag scheme (tests/examples)
packages=(
	ca-certificates git make gcc libc6-dev
	protobuf-compiler qemu-guest-agent
	qemu-system-x86 linux-image-amd64 busybox-static cpio kmod
	iproute2 e2fsprogs util-linux passwd
	xen-utils-4.17 xenstore-utils
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
	rpm mmdebstrap
)

missing=()
for p in "${packages[@]}"; do
	if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
		missing+=("$p")
	fi
done
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "test-deps: missing Debian packages (run as root, or install them): ${missing[*]}" >&2
		exit 1
	fi
	echo "test-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

gobin="$(${GO:-go} env GOPATH)/bin"
if [[ ! -x "$gobin/protoc-gen-go" || ! -x "$gobin/protoc-gen-go-grpc" || ! -x "$gobin/staticcheck" || ! -x "$gobin/nfpm" ]]; then
	echo "test-deps: installing the pinned Go tools (make tools)"
	make --no-print-directory tools
fi
