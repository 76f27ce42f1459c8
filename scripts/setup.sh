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
  # The tests of the coordinator's outage check start their own Alertmanager the same way.
  [prometheus-alertmanager]=prometheus-alertmanager
  # The test of the systemd units runs `systemd-analyze verify` on them (nothing is started).
  [systemd-analyze]=systemd
  # The test of the HTML report loads it in headless Chromium (screenshot, rendered DOM, console
  # errors). The package is large; it is installed here only, quietly like the rest.
  [chromium]=chromium
  # The container tests run a real OCI runtime (runc) on a root filesystem they build from
  # busybox-static (below); no image is pulled.
  [runc]=runc
)

# Debian package -> a file that shows it is installed, for what is not a program on PATH.
declare -A files=(
  # The history tests start their own PostgreSQL server (initdb + pg_ctl in a temporary
  # directory, scripts/postgres.sh); Debian keeps those programs off PATH.
  [postgresql]='/usr/lib/postgresql/*/bin/initdb'
  # Schedules and blackouts name IANA zones; jiff reads them from the system's tz database.
  [tzdata]=/usr/share/zoneinfo/Europe/Berlin
  # The test of the Kubernetes manifests parses them.
  [python3-yaml]='/usr/lib/python3/dist-packages/yaml/__init__.py'
  # The container tests copy its static /bin/busybox into a container's root filesystem; the
  # dynamically linked `busybox` package would not run there, so the package itself is checked.
  [busybox-static]=/var/lib/dpkg/info/busybox-static.list
)

# Packages whose own service the install would start and enable. Tests start their own servers;
# a database or alert router left running on the machine is not wanted.
services=(prometheus-alertmanager postgresql)

missing=()
for bin in "${!needs[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 || missing+=("${needs[$bin]}")
done
for package in "${!files[@]}"; do
  # Unquoted on purpose: the pattern is a glob (the PostgreSQL major version varies).
  # shellcheck disable=SC2086
  compgen -G ${files[$package]} >/dev/null || missing+=("$package")
done

# The tests of the `grpc` probe serve the standard health service with Python's grpcio and
# grpcio-health-checking (installed from PyPI below: Debian does not package the health service),
# which needs pip.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi

if [ ${#missing[@]} -gt 0 ]; then
  # Deduplicate package names.
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi

  # Keep the packages' services from starting during the install: invoke-rc.d and
  # deb-systemd-invoke ask /usr/sbin/policy-rc.d, and 101 means "not allowed". Containers often
  # have one already; it is left alone. One written here is removed when the script exits.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Written by faultline scripts/setup.sh for one install; removed after it.\nexit 101\n' \
      | $sudo tee "$policy" >/dev/null
    $sudo chmod 0755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi

  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

  # The install still enables the services for the next boot (and a policy-rc.d that was there
  # may have allowed a start). Stop and disable those of packages installed now, never a service
  # that was on the machine before.
  if [ -d /run/systemd/system ]; then
    for package in "${missing[@]}"; do
      for service in "${services[@]}"; do
        if [ "$package" = "$service" ]; then
          $sudo systemctl disable --now --quiet "$service.service" 2>/dev/null || true
        fi
      done
    done
  fi
fi
if ! python3 -c 'import grpc, grpc_health.v1.health' >/dev/null 2>&1; then
  echo "setup: installing grpcio and grpcio-health-checking (PyPI) for the grpc probe tests" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root to install grpcio" >&2; exit 1; }
    sudo=sudo
  fi
  # Debian marks its Python as externally managed; these two packages are test fixtures only.
  $sudo env PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install \
    --quiet --disable-pip-version-check grpcio grpcio-health-checking
  python3 -c 'import grpc, grpc_health.v1.health' \
    || { echo "setup: grpcio-health-checking is still not importable by python3" >&2; exit 1; }
fi
echo "setup: everything faultline needs is installed" >&2
