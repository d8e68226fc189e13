# find_package(vlmadapt CONFIG) works from the build tree and from an install prefix.
# The install is self-contained: the library and the CLI as libraries (vlmadapt::vlmadapt,
# vlmadapt::cli), the public headers, the `vlmadapt` program, the built-in model and the
# recipes, and vlmadapt_add_cli to build the program with more methods.
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)
set(_cmakedir ${CMAKE_INSTALL_LIBDIR}/cmake/vlmadapt)
set(VLMADAPT_DATA_DIR ${CMAKE_INSTALL_DATADIR}/vlmadapt)  # relative: a PATH_VAR of the config
install(TARGETS vlmadapt vlmadapt_cli_archive vlmadapt_cli EXPORT vlmadaptTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS vlmadapt_exe RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/vlmadapt DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES models/default.safetensors DESTINATION ${VLMADAPT_DATA_DIR}/models)
install(DIRECTORY recipes DESTINATION ${VLMADAPT_DATA_DIR})
install(EXPORT vlmadaptTargets NAMESPACE vlmadapt:: DESTINATION ${_cmakedir})
export(EXPORT vlmadaptTargets NAMESPACE vlmadapt:: FILE ${CMAKE_BINARY_DIR}/vlmadaptTargets.cmake)
configure_package_config_file(cmake/vlmadaptConfig.cmake.in ${CMAKE_BINARY_DIR}/vlmadaptConfig.cmake
  INSTALL_DESTINATION ${_cmakedir} PATH_VARS VLMADAPT_DATA_DIR)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/vlmadaptConfigVersion.cmake COMPATIBILITY SameMajorVersion)
configure_file(cmake/vlmadaptCli.cmake ${CMAKE_BINARY_DIR}/vlmadaptCli.cmake COPYONLY)  # for the build tree
install(FILES ${CMAKE_BINARY_DIR}/vlmadaptConfig.cmake ${CMAKE_BINARY_DIR}/vlmadaptConfigVersion.cmake
  cmake/vlmadaptCli.cmake DESTINATION ${_cmakedir})
