# find_package(vlmadapt CONFIG) works from the build tree and from an install prefix.
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)
install(TARGETS vlmadapt EXPORT vlmadaptTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS vlmadapt_exe RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/vlmadapt DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT vlmadaptTargets NAMESPACE vlmadapt:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/vlmadapt)
export(EXPORT vlmadaptTargets NAMESPACE vlmadapt:: FILE ${CMAKE_BINARY_DIR}/vlmadaptTargets.cmake)
configure_package_config_file(cmake/vlmadaptConfig.cmake.in ${CMAKE_BINARY_DIR}/vlmadaptConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/vlmadapt)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/vlmadaptConfigVersion.cmake COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/vlmadaptConfig.cmake ${CMAKE_BINARY_DIR}/vlmadaptConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/vlmadapt)
