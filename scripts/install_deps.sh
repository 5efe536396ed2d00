#!/usr/bin/env bash
# Installs kvtc's build and test dependencies from Debian's archive (Debian 12). Idempotent.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libdeflate-dev zlib1g-dev libopenblas-dev liblapacke-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev liblzma-dev
      gnuplot-nox python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
