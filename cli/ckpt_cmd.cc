// `cohort ckpt list ROOT` and `cohort ckpt verify PATH` (checkpoint/checkpoint.h).
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include "checkpoint/checkpoint.h"
#include "cli/commands.h"

namespace cohort::cli {
namespace {

void PrintManifest(const std::string& dir, const checkpoint::Manifest& m) {
  uint64_t bytes = 0;
  for (const auto& f : m.files) bytes += f.size;
  std::printf("checkpoint %s\n", dir.c_str());
  std::printf("  format version   %u\n", m.format_version);
  std::printf("  step             %" PRId64 " (optimizer step %" PRId64 ")\n", m.step, m.optimizer_step);
  std::printf("  written          %s by %d rank(s), strategy %s\n", (UtcTime(m.created_unix_ms) + " UTC").c_str(), m.world_size,
              m.strategy.c_str());
  std::printf("  parameters       %" PRIu64 "\n", m.num_parameters);
  std::string states;
  for (const auto& s : m.states) states += (states.empty() ? "" : ", ") + s;
  std::printf("  arrays           %s\n", states.c_str());
  std::printf("  data state       epoch %" PRIu64 ", cursor %" PRIu64 " (seed %" PRIu64 ", data fingerprint %016" PRIx64
              ")\n",
              m.data.epoch, m.data.cursor, m.data.seed, m.data.fingerprint);
  std::printf("  files            %zu, %" PRIu64 " bytes\n", m.files.size(), bytes);
  for (const auto& f : m.files) {
    std::printf("    %s  %12" PRIu64 " bytes  crc32c %08x  elements [%" PRIu64 ", %" PRIu64 ")\n", f.name.c_str(),
                f.size, f.crc32c, f.ranges.empty() ? 0 : f.ranges.front().offset, f.ranges.empty() ? 0 : f.ranges.back().offset + f.ranges.back().size);
  }
  if (!m.job_spec_yaml.empty()) {
    std::printf("  job spec:\n");
    PrintIndented(m.job_spec_yaml, "    ");
  }
}

// PATH as the commands take it: a step directory (one with a manifest), or a checkpoint root for
// its newest complete checkpoint; otherwise PATH itself, so the error names what the user gave.
std::string StepDirOrLatest(const std::string& path) {
  if (checkpoint::ReadManifest(path).ok()) return path;
  auto latest = checkpoint::FindLatest(path);
  return latest.ok() ? latest->dir : path;
}

}  // namespace

void AddCkptCommands(CLI::App& app, Context& ctx) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect and verify checkpoints");
  ckpt->require_subcommand(1);

  auto list_root = std::make_shared<std::string>();
  CLI::App* list = ckpt->add_subcommand("list", "List the checkpoints under a checkpoint root");
  list->add_option("root", *list_root, "checkpoint root (train.checkpoint_dir)")->required();
  list->callback([&ctx, list_root] {
    auto entries = checkpoint::List(*list_root);
    if (!entries.ok()) return ReportError(entries.status(), ctx);
    auto latest = checkpoint::FindLatest(*list_root);
    std::printf("%-16s %-10s %s\n", "step", "status", "");
    for (const auto& e : *entries) {
      const bool is_latest = latest.ok() && latest->step == e.step;
      std::printf("%-16s %-10s %s\n", checkpoint::StepDirName(e.step).c_str(), e.complete ? "complete" : "INCOMPLETE",
                  e.complete ? (is_latest ? "(latest: a resume starts here)" : "") : e.problem.c_str());
    }
    if (entries->empty()) std::printf("(no checkpoints)\n");
  });

  struct ExportArgs {
    std::string path, format = "safetensors", output, layout = "hf";
  };
  auto ex = std::make_shared<ExportArgs>();
  CLI::App* exp = ckpt->add_subcommand(
      "export", "Write a checkpoint's full model weights into one file (safetensors, GPT-2 tensor names)");
  exp->add_option("path", ex->path, "a step directory (ROOT/step-N), or a root for its latest")->required();
  exp->add_option("--format", ex->format, "output format")->check(CLI::IsMember({"safetensors"}))->capture_default_str();
  exp->add_option("-o,--output", ex->output, "output file")->required();
  exp->add_option("--layout", ex->layout,
                  "hf: matmul weights transposed to Hugging Face GPT-2's Conv1D [in, out] (loads into "
                  "transformers' GPT2LMHeadModel); cohort: as stored, [out, in]")
      ->check(CLI::IsMember({"hf", "cohort"}))
      ->capture_default_str();
  exp->callback([&ctx, ex] {
    const std::string dir = StepDirOrLatest(ex->path);
    Status s = checkpoint::ExportSafetensors(dir, ex->output, ex->layout == "hf");
    if (!s.ok()) return ReportError(s, ctx);
    std::printf("wrote %s from %s (%s layout)\n", ex->output.c_str(), dir.c_str(), ex->layout.c_str());
  });

  auto verify_path = std::make_shared<std::string>();
  CLI::App* verify = ckpt->add_subcommand(
      "verify", "Check every file and tensor checksum of one checkpoint and print its manifest");
  verify->add_option("path", *verify_path, "a step directory (ROOT/step-N), or a root for its latest")->required();
  verify->callback([&ctx, verify_path] {
    const std::string dir = StepDirOrLatest(*verify_path);
    checkpoint::Manifest m;
    Status s = checkpoint::Verify(dir, &m);
    if (!s.ok()) return ReportError(s, ctx);
    PrintManifest(dir, m);
    std::printf("OK: every file and tensor checksum matches\n");
  });
}

}  // namespace cohort::cli
