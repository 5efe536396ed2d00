# Sourced by the device scripts (scripts/device_*.sh): unpacks the carried sysroot and points the build
# at it. The GPU machine's image lacks the Debian dev packages, so $PYSYS (default .pysys/ in the
# checkout, in .gitignore; carry it) holds sysroot.tar.xz, made on the development machine by
# scripts/make_device_sysroot.sh (its header lists what it holds): libdeflate, zlib, OpenBLAS, LAPACKE,
# nlohmann-json, CLI11, hiredis, GoogleTest, Google Benchmark, a pkg-config binary, and the Python build's
# wheels. Every $PYSYS/*.tar.xz is unpacked into one sysroot, $S; the pkg-config binary needs
# libpkgconf from it, hence LD_LIBRARY_PATH first.
PYSYS=${PYSYS:-$PWD/.pysys}
S=/tmp/pysys-root
mkdir -p $S
for t in "$PYSYS"/*.tar.xz; do tar xJf "$t" -C $S; done
export LD_LIBRARY_PATH=$S/lib:$S/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
export PKG_CONFIG_PATH=$S/lib/pkgconfig PYTHONUNBUFFERED=1
if ! command -v pkg-config >/dev/null; then mkdir -p $S/bin; cp $S/pkg-config $S/bin/; export PATH=$S/bin:$PATH; fi
