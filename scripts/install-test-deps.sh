#!/usr/bin/env bash
# Installs what the test suite needs beyond the Python packages, from Debian's packages.
# Idempotent and quiet when everything is already there.
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "missing ${need[*]}: install them with apt-get (needs root)" >&2; exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "installing ${need[*]} from Debian's packages ..."
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
