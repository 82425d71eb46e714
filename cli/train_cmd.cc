// TEMPORARY placeholder so the tree configures; replaced by the data-preparation author.
#include "cli/commands.h"
namespace cohort::cli {
void AddTrainCommand(CLI::App& app, Context& ctx) {}
}  // namespace cohort::cli
