#!/usr/bin/env bash
# Debian packages sdcloud's local machines and test hosts need (debootstrap, systemd-nspawn,
# tinyproxy, apt-cacher-ng for the package cache they share), and the tools the tests and benchmarks
# compare against (wget, aria2). Root only; installs only what is missing.
set -euo pipefail
pkgs=(debootstrap systemd-container tinyproxy zstd apt-cacher-ng git openssh-client curl wget aria2 iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "sdcloud: missing Debian packages: ${missing[*]} - run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "sdcloud: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian's apt-cacher-ng starts a service listening on every address of this computer; sdcloud runs its
# own, on the loopback only, while machines run (plugins/module_utils/sdcloud/nspawn.py, AptCache)
if [[ " ${missing[*]} " == *" apt-cacher-ng "* ]] && [ -d /run/systemd/system ]; then
  systemctl disable --now apt-cacher-ng.service
fi
