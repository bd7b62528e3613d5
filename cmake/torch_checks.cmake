# After find_package(Torch): refuse a mixed installation, and link a PyPI wheel's own CUDA runtime.

# TorchConfig finds libtorch.so with find_library(... PATHS <its prefix>/lib), where the system's
# directories come first: with Debian's libtorch-dev installed, a CMAKE_PREFIX_PATH naming only
# torch's share/cmake gives 2.x headers and Debian's 1.13 libtorch.so, which fails only at run time.
get_filename_component(_nnx_torch_lib "${TORCH_LIBRARY}" REALPATH)
get_filename_component(_nnx_torch_prefix "${TORCH_INSTALL_PREFIX}" REALPATH)
string(FIND "${_nnx_torch_lib}" "${_nnx_torch_prefix}/" _nnx_at)
if(NOT _nnx_at EQUAL 0)
  message(FATAL_ERROR "Torch's CMake config in ${TORCH_INSTALL_PREFIX} (version ${Torch_VERSION}) "
    "found ${_nnx_torch_lib}, another installation. Put the Torch package's root "
    "(${TORCH_INSTALL_PREFIX}) first on CMAKE_PREFIX_PATH, or use the torch2 preset.")
endif()

# PyPI's torch wheels load the CUDA runtime of the nvidia-* wheels beside them (their RPATH is
# $ORIGIN/../../nvidia/...). Torch's config links CUDA::cudart of whatever toolkit CMake found
# (possibly older than the wheel's); the executables would then load that older runtime first.
# Link the wheel's, so that every library in the process is the one the wheel was built with.
if(TARGET torch::cudart)
  file(GLOB _nnx_wheel_cudart "${_nnx_torch_prefix}/../nvidia/cu*/lib/libcudart.so.*"
                              "${_nnx_torch_prefix}/../nvidia/cuda_runtime/lib/libcudart.so.*")
  if(_nnx_wheel_cudart)
    list(GET _nnx_wheel_cudart 0 _nnx_wheel_cudart)
    get_filename_component(_nnx_wheel_cudart "${_nnx_wheel_cudart}" ABSOLUTE)
    set_property(TARGET torch::cudart PROPERTY INTERFACE_LINK_LIBRARIES "${_nnx_wheel_cudart}")
    message(STATUS "nnx: CUDA runtime of the torch wheel: ${_nnx_wheel_cudart}")
  endif()
endif()

