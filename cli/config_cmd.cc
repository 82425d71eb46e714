// `cohort config check FILE` and `cohort config show FILE`.
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "common/config.h"

namespace cohort::cli {

void AddConfigCommands(CLI::App& app, Context& ctx) {
  CLI::App* config = app.add_subcommand("config", "Validate and print job specs");
  config->require_subcommand(1);

  auto check_file = std::make_shared<std::string>();
  CLI::App* check = config->add_subcommand("check", "Validate a job spec; exit 2 with the first error");
  check->add_option("file", *check_file, "job spec (YAML)")->required();
  check->callback([&ctx, check_file] {
    auto spec = config::LoadJobSpec(*check_file);
    if (!spec.ok()) return ReportError(spec.status(), ctx);
    std::printf("%s: OK\n", check_file->c_str());
  });

  auto show_file = std::make_shared<std::string>();
  CLI::App* show = config->add_subcommand(
      "show", "Print the fully resolved job spec (defaults filled in, paths resolved)");
  show->add_option("file", *show_file, "job spec (YAML)")->required();
  show->callback([&ctx, show_file] {
    auto spec = config::LoadJobSpec(*show_file);
    if (!spec.ok()) return ReportError(spec.status(), ctx);
    std::fputs(config::ToYaml(*spec).c_str(), stdout);
  });
}

}  // namespace cohort::cli
