// nnx-train --config FILE [dotted.key=value ...]: train from YAML, resume from the run's
// checkpoints. The command line is nnx::trainer::train_main() (tools/trainer/main.cpp).
#include "nnx/trainer/trainer.h"

int main(int argc, char** argv) { return nnx::trainer::train_main(argc, argv); }
