# Sourced by scripts/device_smollm2_gpu.sh and scripts/device_smollm2_eval.sh on the GPU machine, where
# the model arrives in parts (98 MB against 64 MiB per device call): sets MODEL, and
# `smollm2_model DIR` makes sure $MODEL is the file scripts/models.sh pins (size and sha256), joining
# DIR/part-a? (`split -b 34000000`) when it is absent or wrong. It prints one line saying what it did,
# and returns 1 (the line says why) on failure.
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
smollm2_model() {
  local smol=$1 size sha parts
  read -r size sha < <(sed -n 's/.*SmolLM2-135M-Instruct\.Q4_1\.gguf|\([0-9]*\)|\([0-9a-f]\{64\}\)".*/\1 \2/p' scripts/models.sh)
  [ -n "${sha:-}" ] || { echo "FAIL: no pinned size and sha256 for $MODEL in scripts/models.sh"; return 1; }
  _smollm2_ok() { [ -f "$1" ] && [ "$(stat -L -c %s "$1")" = "$size" ] && [ "$(sha256sum < "$1" | cut -d' ' -f1)" = "$sha" ]; }
  if _smollm2_ok "$MODEL"; then
    echo "model: $MODEL already there, sha256 verified"
    return 0
  fi
  parts=("$smol"/part-a?)
  [ -f "${parts[0]}" ] || { echo "FAIL: $MODEL absent and no $smol/part-a? to join"; return 1; }
  mkdir -p models; rm -f "$MODEL"  # a link from the development machine's checkout leads nowhere here
  cat "${parts[@]}" > "$MODEL.partial"
  if ! _smollm2_ok "$MODEL.partial"; then
    echo "FAIL: ${parts[*]##*/} joined: $(stat -c %s "$MODEL.partial") bytes, sha256 $(sha256sum < "$MODEL.partial" | cut -d' ' -f1); want $size bytes, $sha"
    return 1
  fi
  mv "$MODEL.partial" "$MODEL"
  echo "model: joined ${#parts[@]} parts into $MODEL, $size bytes, sha256 verified"
}
