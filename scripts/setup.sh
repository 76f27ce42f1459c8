#!/usr/bin/env bash
# Installs what faultline's quickstart and tests need on a fresh Debian machine, and nothing that is
# already there. Safe to run again. Needs root (or sudo) only when something is missing.
set -euo pipefail

# binary -> Debian package that provides it
declare -A needs=(
  [python3]=python3
  [ip]=iproute2
  [tc]=iproute2
  [nft]=nftables
  [unshare]=util-linux
  [mount]=mount
  [df]=coreutils
  [curl]=curl
  # The tests of the prometheus probe and the error-budget gate start their own Prometheus
  # (on a free loopback port, with a temporary data directory); the package's service is not used.
  [prometheus]=prometheus
)

missing=()
for bin in "${!needs[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 || missing+=("${needs[$bin]}")
done

if [ ${#missing[@]} -gt 0 ]; then
  # Deduplicate package names.
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: everything faultline needs is installed" >&2
