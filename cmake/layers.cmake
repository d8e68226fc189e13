# Layers of the library: vlmadapt_add_layer(<layer> <sources>...) makes the object library
# vlmadapt_<layer>. Its include root (build/layers/<layer>/) holds links to the public
# headers (vlmadapt/<lower>) and private headers (<lower>/) of this layer and those
# registered before it, and nothing else: an include of a higher layer fails to compile.
set(VLMADAPT_LAYERS_BELOW "")
function(vlmadapt_add_layer layer)
  set(root ${CMAKE_BINARY_DIR}/layers/${layer})
  file(MAKE_DIRECTORY ${root}/vlmadapt)
  set(visible ${VLMADAPT_LAYERS_BELOW} ${layer})
  foreach(l ${visible})
    if(EXISTS ${PROJECT_SOURCE_DIR}/include/vlmadapt/${l})
      file(CREATE_LINK ${PROJECT_SOURCE_DIR}/include/vlmadapt/${l} ${root}/vlmadapt/${l} SYMBOLIC)
    endif()
    if(EXISTS ${PROJECT_SOURCE_DIR}/src/${l})
      file(CREATE_LINK ${PROJECT_SOURCE_DIR}/src/${l} ${root}/${l} SYMBOLIC)
    endif()
  endforeach()
  if(layer STREQUAL "methods")  # built-in method headers: "methods/coop.h"
    file(CREATE_LINK ${PROJECT_SOURCE_DIR}/methods ${root}/methods SYMBOLIC)
  endif()
  add_library(vlmadapt_${layer} OBJECT ${ARGN})
  target_include_directories(vlmadapt_${layer} PRIVATE ${root} ${root}/vlmadapt/${layer})
  target_include_directories(vlmadapt_${layer} SYSTEM PRIVATE ${OpenCV_INCLUDE_DIRS})
  target_link_libraries(vlmadapt_${layer} PRIVATE ${TORCH_LIBRARIES} opencv_core
    Boost::program_options nlohmann_json::nlohmann_json ZLIB::ZLIB ICU::uc)
  if(layer STREQUAL "core")
    target_precompile_headers(vlmadapt_core PRIVATE ${PROJECT_SOURCE_DIR}/src/core/pch.h)
  else()
    target_precompile_headers(vlmadapt_${layer} REUSE_FROM vlmadapt_core)
  endif()
  set(VLMADAPT_LAYER_ROOT_${layer} ${root} PARENT_SCOPE)
  set(VLMADAPT_LAYERS_BELOW ${visible} PARENT_SCOPE)
endfunction()
