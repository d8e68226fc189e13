#include <vlmadapt/cli/cli.h>

int main(int argc, char** argv) { return vlmadapt::cli::main(argc, argv); }
