#!/usr/bin/env bash
# Installs the Debian packages that building Berth, its tests and the local
# cluster need. Quiet and quick when they are all there already.
set -euo pipefail
pkgs=(
	iptables nftables iproute2 openssl curl util-linux procps kmod # the node: rules, links, certs, mounts
	conntrack socat ethtool                              # kubelet and kube-proxy expect them
	libseccomp-dev gcc                                   # runc with seccomp (cgo)
	busybox-static                                       # the test image
	lvm2 e2fsprogs xfsprogs                              # LVM volumes on loop devices
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { echo "deps: missing ${missing[*]}; run as root" >&2; exit 1; }
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
