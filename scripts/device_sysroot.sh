# Sourced by the device scripts (scripts/device_*.sh): unpacks the carried sysroot and points the build
# at it. The GPU machine's image lacks the Debian dev packages, so $PYSYS (default .pysys/ in the
# checkout, listed in .git/info/exclude; carry it) holds tarballs made on the development machine:
#   pysys.tar.xz   headers and .so files of libdeflate, OpenBLAS, LAPACKE, nlohmann-json..., their
#                  pkg-config data, a pkg-config binary, and the wheels of scikit-build-core 1.1.2,
#                  pathspec, packaging and nanobind 2.9.2
#   hiredis.tar.xz hiredis 0.14.1 from Debian 12's libhiredis-dev: include/hiredis/ from
#                  /usr/include/hiredis, lib/libhiredis.so{,.0.14}, and Debian's hiredis.pc with
#                  prefix=${pcfiledir}/../.. and Cflags -I${includedir} -I${prefix}/include (the code
#                  includes <hiredis/hiredis.h>)
#   gtest.tar.xz   GoogleTest (static) and Google Benchmark from Debian 12, laid out as in /usr
#                  (include/, lib/x86_64-linux-gnu/ with cmake/GTest and cmake/benchmark), for the
#                  C++ tests and benches (scripts/device_store_gpu.sh)
# Every $PYSYS/*.tar.xz is unpacked into one sysroot, $S.
PYSYS=${PYSYS:-$PWD/.pysys}
S=/tmp/pysys-root
mkdir -p $S
for t in "$PYSYS"/*.tar.xz; do tar xJf "$t" -C $S; done
export LD_LIBRARY_PATH=$S/lib:$S/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
export PKG_CONFIG_PATH=$S/lib/pkgconfig PYTHONUNBUFFERED=1
if ! command -v pkg-config >/dev/null; then mkdir -p $S/bin; cp $S/pkg-config $S/bin/; export PATH=$S/bin:$PATH; fi
