# KVTC_CUDA=AUTO builds the CUDA backend when nvcc is found, ON requires it, OFF skips it.
# The architecture list is explicit (never detected from the local GPU), so binaries travel.
set(KVTC_HAVE_CUDA OFF)
if(NOT KVTC_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80-real 90-real 90-virtual)
    endif()
    # CUDA sources are C++17 (CMake before 3.26 knows no C++20 flags for nvcc; the .cu files need
    # nothing newer). Without this, CUDA_STANDARD falls back to CXX_STANDARD (20) and generation fails.
    if(NOT DEFINED CMAKE_CUDA_STANDARD)
      set(CMAKE_CUDA_STANDARD 17)
      set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    if(NOT TARGET CUDA::cublas)
      # A toolkit without cuBLAS (nvcc alone, as on the CPU machines): take cuBLAS from the PyPI wheel
      # nvidia-cublas (requirements.txt) in .venv, or from KVTC_CUBLAS_ROOT (a folder with include/
      # and lib/), so that every GPU target still compiles and links; its tests then skip for want of
      # a device. The toolkit's own cuBLAS, where there is one, always wins.
      file(GLOB _kvtc_cublas_wheel "${PROJECT_SOURCE_DIR}/.venv/lib/python3*/site-packages/nvidia/cu13")
      set(KVTC_CUBLAS_ROOT "${_kvtc_cublas_wheel}" CACHE PATH "cuBLAS (include/, lib/) when the CUDA toolkit has none")
      find_path(KVTC_CUBLAS_INCLUDE_DIR cublas_v2.h PATHS "${KVTC_CUBLAS_ROOT}/include" NO_DEFAULT_PATH)
      find_library(KVTC_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 PATHS "${KVTC_CUBLAS_ROOT}/lib" NO_DEFAULT_PATH)
      find_library(KVTC_CUBLASLT_LIBRARY NAMES cublasLt libcublasLt.so.13 PATHS "${KVTC_CUBLAS_ROOT}/lib" NO_DEFAULT_PATH)
      if(KVTC_CUBLAS_INCLUDE_DIR AND KVTC_CUBLAS_LIBRARY AND KVTC_CUBLASLT_LIBRARY)
        if(NOT TARGET CUDA::cublasLt)
          add_library(CUDA::cublasLt SHARED IMPORTED)
          set_target_properties(CUDA::cublasLt PROPERTIES IMPORTED_LOCATION "${KVTC_CUBLASLT_LIBRARY}"
            INTERFACE_INCLUDE_DIRECTORIES "${KVTC_CUBLAS_INCLUDE_DIR}" INTERFACE_LINK_LIBRARIES CUDA::cudart)
        endif()
        add_library(CUDA::cublas SHARED IMPORTED)
        set_target_properties(CUDA::cublas PROPERTIES IMPORTED_LOCATION "${KVTC_CUBLAS_LIBRARY}"
          INTERFACE_INCLUDE_DIRECTORIES "${KVTC_CUBLAS_INCLUDE_DIR}" INTERFACE_LINK_LIBRARIES "CUDA::cudart;CUDA::cublasLt")
        message(STATUS "kvtc: cuBLAS from ${KVTC_CUBLAS_ROOT} (the toolkit has none)")
      endif()
    endif()
    if(TARGET CUDA::cublas)
      set(KVTC_HAVE_CUDA ON)
    elseif(KVTC_CUDA STREQUAL "ON")
      message(FATAL_ERROR "KVTC_CUDA=ON but the CUDA toolkit at ${CUDAToolkit_LIBRARY_DIR} has no cuBLAS")
    else()
      # nvcc without cuBLAS (a toolkit installed in part): build without the backend rather than fail.
      message(STATUS "kvtc: nvcc found, but no cuBLAS in ${CUDAToolkit_LIBRARY_DIR}")
    endif()
  elseif(KVTC_CUDA STREQUAL "ON")
    message(FATAL_ERROR "KVTC_CUDA=ON but no CUDA compiler was found")
  endif()
endif()
message(STATUS "kvtc: CUDA backend ${KVTC_HAVE_CUDA}")
