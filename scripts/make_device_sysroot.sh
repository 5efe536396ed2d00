#!/bin/bash
# Makes .pysys/sysroot.tar.xz, the sysroot the device scripts carry (scripts/device_sysroot.sh unpacks
# every .pysys/*.tar.xz into one prefix): the GPU machine's image has CUDA, PyTorch and a compiler but
# not the Debian dev packages the C++ build needs. Run on the development machine (Debian 12, after
# scripts/install_deps.sh); nothing here is committed (.pysys/ is in .gitignore).
#   scripts/make_device_sysroot.sh            # about 15 MB; carry .pysys in every device call
# Holds, laid out as under /usr (include/, lib/x86_64-linux-gnu/ with pkgconfig/ and cmake/):
#   libdeflate, zlib, OpenBLAS (pthread: libblas, liblapack, libopenblas, cblas.h) and LAPACKE with
#   libgfortran and libquadmath, nlohmann-json, CLI11, hiredis, GoogleTest (static) and Google Benchmark;
#   the pkg-config binary (pkgconf, with libpkgconf) at the top; and wheels/ with scikit-build-core,
#   pathspec, packaging and nanobind at requirements.txt's pins (scripts/device_build_python_cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=x86_64-linux-gnu
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkgs="libdeflate-dev libdeflate0 zlib1g-dev liblapacke-dev liblapacke libtmglib3 nlohmann-json3-dev libhiredis-dev
      libhiredis0.14 libgtest-dev libbenchmark-dev libbenchmark1debian libopenblas-pthread-dev libcli11-dev"
for p in $pkgs; do
  dpkg -L "$p" | while read -r f; do
    case "$f" in /usr/lib/$arch/openblas-pthread/*) continue ;; esac  # the generic names below instead
    case "$f" in *.a) case "$f" in */libgtest*|*/libgmock*|*/libbenchmark*) ;; *) continue ;; esac ;; esac
    case "$f" in /usr/include/*|/usr/lib/$arch/*|/usr/share/pkgconfig/*|/usr/share/cmake/*|/usr/lib/cmake/*) ;; *) continue ;; esac
    [ -d "$f" ] && continue
    rel=${f#/usr/}
    mkdir -p "$stage/$(dirname "$rel")"
    cp -L "$f" "$stage/$rel" 2>/dev/null || true
  done
done
# Debian's alternatives: the generic BLAS / LAPACK / OpenBLAS names and cblas.h point at openblas-pthread.
for l in libblas.so.3 liblapack.so.3 libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  src=/usr/lib/$arch/$l; [ -e "$src" ] || src=/lib/$arch/$l
  cp -L "$src" "$stage/lib/$arch/$l"
done
for l in libblas liblapack libopenblas; do
  ln -sf "$(cd "$stage/lib/$arch" && ls $l.so.[0-9]*)" "$stage/lib/$arch/$l.so"
done
cp -L /usr/include/$arch/cblas.h "$stage/include/cblas.h"
cp -L /usr/include/$arch/openblas_config.h "$stage/include/" 2>/dev/null || true
cp -L /usr/lib/$arch/pkgconfig/blas.pc /usr/lib/$arch/pkgconfig/lapack.pc "$stage/lib/$arch/pkgconfig/" 2>/dev/null || true
# pkg-config files, all in lib/pkgconfig/ (what scripts/device_sysroot.sh puts on PKG_CONFIG_PATH),
# name their prefix as /usr: make it relative to where they lie.
mkdir -p "$stage/lib/pkgconfig"
for pc in "$stage"/lib/$arch/pkgconfig/*.pc "$stage"/share/pkgconfig/*.pc; do
  [ -e "$pc" ] || continue
  sed -e 's|^prefix=/usr$|prefix=${pcfiledir}/../..|' -e 's|/usr/include|${prefix}/include|g' \
    -e "s|/usr/lib/$arch|\${prefix}/lib/$arch|g" "$pc" > "$stage/lib/pkgconfig/$(basename "$pc")"
done
cp -L /usr/bin/pkgconf "$stage/pkg-config"
cp -L /usr/lib/$arch/libpkgconf.so.3 "$stage/lib/$arch/"
# The Python build's pins, for scripts/device_build_python_cuda.sh (no PyPI on the GPU machine).
mkdir -p "$stage/wheels"
pins=$(grep -E '^(scikit-build-core|pathspec|packaging|nanobind)==' requirements.txt | sed 's/ *#.*//' || true)
if [ -n "$pins" ]; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip download -q --no-deps -d "$stage/wheels" $pins
fi
mkdir -p .pysys
tar cJf .pysys/sysroot.tar.xz -C "$stage" .
ls -la .pysys/
