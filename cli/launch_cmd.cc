// `cohort launch sbatch JOB.yaml [options]`: writes a Slurm batch script that runs
// `cohort train JOB.yaml` on the allocation with `srun --mpi=pmix`, to stdout or to `-o FILE`.
//
// The job spec (with the --set overrides) is validated first, so a script is only produced for a
// job that `cohort train` accepts. The script names this binary (/proc/self/exe) and the job file
// by absolute paths, shell-quoted; #SBATCH values are quoted the way sbatch parses them (double
// quotes, backslash escapes, '#' starts a comment). Control characters are refused everywhere: a
// newline would end a comment or an #SBATCH line and turn the rest into commands.
//
// Exit codes: 0 written, 2 bad input (flags, job spec, existing output without --force), 1 I/O.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"
#include "common/config.h"

namespace cohort::cli {
namespace {

struct SbatchArgs {
  std::string file;
  std::string script_path;  // -o: "" = stdout
  bool force = false;
  std::string nodes = "1";
  std::string ntasks_per_node = "1";
  std::string cpus_per_task;  // "" = train.threads if > 0, else 1
  std::string time;           // "" = no --time line (the partition's default limit)
  std::string partition;
  std::string account;
  std::string job_name;  // "" = the job spec's name
  std::string signal = "USR1@120";
  std::string output = "cohort-%j.out";
  bool requeue = false;
  std::vector<std::string> overrides;
};

// Characters that never need shell quoting.
bool IsShellSafe(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("_@%+=:,./-").find(c) != std::string_view::npos;
}

// POSIX-shell quoting: safe words stay bare; anything else goes in single quotes, with each ' as
// '\'' (close, escaped quote, reopen). The result expands to exactly `s` as one word.
std::string ShellQuote(std::string_view s) {
  if (!s.empty() && std::all_of(s.begin(), s.end(), IsShellSafe)) return std::string(s);
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  out.push_back('\'');
  return out;
}

// Quoting for an #SBATCH value. sbatch splits these lines itself (not a shell): whitespace ends a
// word and '#' starts a comment unless inside double quotes; a backslash escapes the next
// character; single quotes are ordinary characters.
std::string SbatchQuote(std::string_view s) {
  const bool plain = !s.empty() && std::none_of(s.begin(), s.end(), [](char c) {
    return std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '\\' || c == '#';
  });
  if (plain) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

Status CheckNoControlChars(std::string_view what, std::string_view s) {
  for (char c : s) {
    if (std::iscntrl(static_cast<unsigned char>(c))) {
      return InvalidArgument(std::string(what) +
                             ": contains a control character (newline, tab...)");
    }
  }
  return Status::Ok();
}

Status CheckText(std::string_view flag, const std::string& s) {
  if (s.empty()) return InvalidArgument(std::string(flag) + ": must not be empty");
  return CheckNoControlChars(flag, s);
}

// A decimal integer in [1, max], digits only (no sign, no spaces).
Result<int> ParsePositive(std::string_view flag, const std::string& s, int max) {
  int v = 0;
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, v);
  const bool digits = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
  if (!digits || ec != std::errc() || ptr != end || v < 1 || v > max) {
    return InvalidArgument(std::string(flag) + ": '" + s + "' is not an integer in [1, " +
                           std::to_string(max) + "]");
  }
  return v;
}

// Splits `s` at `sep`; every piece must be 1-6 digits. nullopt otherwise.
std::optional<std::vector<int64_t>> DigitFields(std::string_view s, char sep) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(sep, start);
    const std::string_view part =
        s.substr(start, pos == std::string_view::npos ? pos : pos - start);
    if (part.empty() || part.size() > 6) return std::nullopt;
    int64_t v = 0;
    for (char c : part) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
      v = v * 10 + (c - '0');
    }
    out.push_back(v);
    if (pos == std::string_view::npos) return out;
    start = pos + 1;
  }
}

// A Slurm time limit: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
// "days-hours:minutes" or "days-hours:minutes:seconds"; or unlimited/infinite (returns -1).
// Returns the limit in seconds; zero is refused (it would mean "no limit").
Result<int64_t> ParseSlurmTime(const std::string& s) {
  auto bad = [&s](std::string why) {
    return InvalidArgument("--time: '" + s + "' " + why +
                           "; use minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S (e.g. 90, 1:30:00, "
                           "2-00:00:00) or unlimited");
  };
  std::string lower = s;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "unlimited" || lower == "infinite") return int64_t{-1};
  int64_t days = 0;
  std::string_view rest = s;
  const size_t dash = rest.find('-');
  if (dash != std::string_view::npos) {
    auto d = DigitFields(rest.substr(0, dash), ':');
    if (!d || d->size() != 1) return bad("is not a Slurm time");
    days = (*d)[0];
    rest = rest.substr(dash + 1);
  }
  auto f = DigitFields(rest, ':');
  if (!f || f->size() > 3) return bad("is not a Slurm time");
  int64_t h = 0, m = 0, sec = 0;
  if (dash != std::string_view::npos) {  // D-H, D-H:M, D-H:M:S
    h = (*f)[0];
    if (f->size() > 1) m = (*f)[1];
    if (f->size() > 2) sec = (*f)[2];
    if (h >= 24) return bad("has hours >= 24 after the days");
  } else if (f->size() == 1) {  // M
    m = (*f)[0];
  } else if (f->size() == 2) {  // M:S
    m = (*f)[0];
    sec = (*f)[1];
  } else {  // H:M:S
    h = (*f)[0];
    m = (*f)[1];
    sec = (*f)[2];
  }
  if (sec >= 60 || (f->size() == 3 && m >= 60) || (dash != std::string_view::npos && m >= 60)) {
    return bad("has minutes or seconds >= 60");
  }
  const int64_t total = ((days * 24 + h) * 60 + m) * 60 + sec;
  if (total == 0)
    return bad("is zero (Slurm reads that as no limit: omit --time or say unlimited)");
  return total;
}

// Slurm's --signal: [{R|B}:]<signal>[@<seconds before the limit>], the signal a name (USR1,
// SIGUSR1) or a number. Returns the lead time in seconds (Slurm's default is 60).
Result<int> ParseSlurmSignal(const std::string& s) {
  auto bad = [&s](std::string why) {
    return InvalidArgument("--signal: '" + s + "' " + why +
                           "; use [B:|R:]SIGNAL[@SECONDS], e.g. USR1@120, or none");
  };
  std::string_view rest = s;
  if (rest.size() >= 2 && (rest[0] == 'B' || rest[0] == 'R') && rest[1] == ':')
    rest.remove_prefix(2);
  int lead = 60;
  const size_t at = rest.find('@');
  std::string_view sig = rest.substr(0, at);
  if (at != std::string_view::npos) {
    auto t = DigitFields(rest.substr(at + 1), ':');
    if (!t || t->size() != 1 || (*t)[0] > 65535) return bad("has a bad time (0-65535 seconds)");
    lead = static_cast<int>((*t)[0]);
  }
  if (sig.empty()) return bad("names no signal");
  if (auto n = DigitFields(sig, ':'); n && n->size() == 1) {
    if ((*n)[0] < 1 || (*n)[0] > 64) return bad("has a signal number outside 1-64");
    return lead;
  }
  std::string name(sig);
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  if (name.rfind("SIG", 0) == 0) name = name.substr(3);
  static constexpr std::string_view kNames[] = {"HUP",    "INT",  "QUIT",  "ABRT", "KILL", "USR1",
                                                "USR2",   "PIPE", "ALRM",  "TERM", "CONT", "STOP",
                                                "TSTP",   "TTIN", "TTOU",  "URG",  "XCPU", "XFSZ",
                                                "VTALRM", "PROF", "WINCH", "IO",   "PWR",  "SYS"};
  if (std::find(std::begin(kNames), std::end(kNames), name) == std::end(kNames)) {
    return bad("names no known signal");
  }
  return lead;
}

// Absolute path of the running binary (what srun will start on every node).
Result<std::string> SelfExe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return Internal("cannot resolve /proc/self/exe: " + ec.message());
  return p.string();
}

// Writes `data` to `path` atomically: a temporary file in the same directory (mode 0755 less the
// umask: the script is executable), fsynced, then moved into place and the directory fsynced.
// Without `overwrite` the move is link(2), which fails if `path` exists (no check-then-act race).
Status WriteScript(const std::string& path, const std::string& data, bool overwrite) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const std::string dir = target.has_parent_path() ? target.parent_path().string() : ".";
  if (!overwrite && ::access(path.c_str(), F_OK) == 0) {
    return Status(Code::kAlreadyExists, path + ": exists; pass --force to overwrite it");
  }
  std::string tmp = dir + "/." + target.filename().string() + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) return ErrnoError(dir + ": cannot create a temporary file", errno);
  auto fail = [&](std::string what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoError(what, err);
  };
  // umask can only be read by setting it; restored at once (the CLI is single-threaded here).
  const mode_t mask = ::umask(0);
  ::umask(mask);
  if (::fchmod(fd, 0755 & ~mask) != 0) return fail(tmp + ": chmod", errno);
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(tmp + ": write", errno);
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return fail(tmp + ": fsync", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError(tmp + ": close", err);
  }
  if (overwrite) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return ErrnoError(path + ": rename", err);
    }
  } else {
    const int rc = ::link(tmp.c_str(), path.c_str());
    const int err = errno;
    ::unlink(tmp.c_str());
    if (rc != 0 && err == EEXIST) {
      return Status(Code::kAlreadyExists, path + ": exists; pass --force to overwrite it");
    }
    if (rc != 0) return ErrnoError(path + ": link", err);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: the script is complete either way
    ::close(dfd);
  }
  return Status::Ok();
}

// Comment block of every script, after the "Generated by" line.
constexpr const char* kScriptHelp =
    R"(# Submit with `sbatch <this file>`; sbatch's command-line options override #SBATCH lines.
#
# Cohort treats SIGUSR1 and SIGTERM as stop requests: every rank finishes its current step and
# exits cleanly, with exit code
# 128 + the signal number. --signal=USR1@T has Slurm send SIGUSR1 to the tasks T seconds before
# the time limit, so a run that times out ends at a step boundary; SIGTERM arrives at the limit,
# on scancel and on preemption, followed by SIGKILL after the cluster's KillWait.
)";

// The script for `spec` (already loaded with a.overrides applied).
Result<std::string> RenderScript(const SbatchArgs& a, const config::JobSpec& spec) {
  ASSIGN_OR_RETURN(const int nodes, ParsePositive("--nodes", a.nodes, 100000));
  ASSIGN_OR_RETURN(const int ntasks, ParsePositive("--ntasks-per-node", a.ntasks_per_node, 10000));
  int cpus = spec.train.threads > 0 ? spec.train.threads : 1;
  if (!a.cpus_per_task.empty()) {
    ASSIGN_OR_RETURN(cpus, ParsePositive("--cpus-per-task", a.cpus_per_task, 10000));
  }
  std::optional<int64_t> time_s;
  if (!a.time.empty()) {
    ASSIGN_OR_RETURN(time_s, ParseSlurmTime(a.time));
  }
  const bool signal = a.signal != "none";
  if (signal) {
    ASSIGN_OR_RETURN(const int lead, ParseSlurmSignal(a.signal));
    if (time_s && *time_s > 0 && lead >= *time_s) {
      return InvalidArgument("--signal: " + a.signal + " fires " + std::to_string(lead) +
                             " s before the limit, but --time " + a.time + " is only " +
                             std::to_string(*time_s) + " s");
    }
  }
  const std::string job_name = a.job_name.empty() ? spec.name : a.job_name;
  RETURN_IF_ERROR(CheckText("--job-name", job_name));
  RETURN_IF_ERROR(CheckText("--output", a.output));
  if (!a.partition.empty()) RETURN_IF_ERROR(CheckText("--partition", a.partition));
  if (!a.account.empty()) RETURN_IF_ERROR(CheckText("--account", a.account));
  for (const auto& o : a.overrides) RETURN_IF_ERROR(CheckNoControlChars("--set", o));

  ASSIGN_OR_RETURN(const std::string exe, SelfExe());
  RETURN_IF_ERROR(CheckNoControlChars("the cohort binary's path", exe));
  std::error_code ec;
  const std::string job = std::filesystem::absolute(a.file, ec).lexically_normal().string();
  if (ec) return IoError(a.file + ": cannot make the path absolute: " + ec.message());
  RETURN_IF_ERROR(CheckNoControlChars(a.file, job));

  std::string s = "#!/bin/bash\n";
  s += "# Generated by `cohort launch sbatch` for job " + spec.name + " (" + ShellQuote(job) +
       ").\n";
  s += kScriptHelp;
  auto sbatch = [&s](std::string_view opt, const std::string& value) {
    s += "#SBATCH --" + std::string(opt) + "=" + SbatchQuote(value) + "\n";
  };
  sbatch("job-name", job_name);
  sbatch("nodes", std::to_string(nodes));
  sbatch("ntasks-per-node", std::to_string(ntasks));
  sbatch("cpus-per-task", std::to_string(cpus));
  if (!a.time.empty()) sbatch("time", a.time);
  if (!a.partition.empty()) sbatch("partition", a.partition);
  if (!a.account.empty()) sbatch("account", a.account);
  sbatch("output", a.output);
  if (signal) sbatch("signal", a.signal);
  if (a.requeue) s += "#SBATCH --requeue\n";
  s += "\nset -euo pipefail\n";
  s += "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-" + std::to_string(cpus) + "}\n";

  // train.threads 0 means "every core of the machine", which would oversubscribe a node shared by
  // several tasks: pin it to this task's CPUs instead.
  std::string cmd = "exec srun --mpi=pmix --cpus-per-task=\"${SLURM_CPUS_PER_TASK:-" +
                    std::to_string(cpus) + "}\" " + ShellQuote(exe) + " train " + ShellQuote(job);
  for (const auto& o : a.overrides) cmd += " --set " + ShellQuote(o);
  if (spec.train.threads == 0) {
    s += "# train.threads is 0 (all cores): use the CPUs Slurm gives each task instead.\n";
    cmd += " --set \"train.threads=${SLURM_CPUS_PER_TASK:-" + std::to_string(cpus) + "}\"";
  }
  s += "# srun starts nodes x ntasks-per-node ranks; exec lets it receive the batch signals.\n";
  s += cmd + "\n";
  return s;
}

}  // namespace

void AddLaunchCommand(CLI::App& app, Context& ctx) {
  CLI::App* launch = app.add_subcommand("launch", "Generate launcher scripts for a job spec");
  launch->require_subcommand(1);

  auto a = std::make_shared<SbatchArgs>();
  CLI::App* sb = launch->add_subcommand(
      "sbatch", "Write a Slurm batch script that runs `cohort train JOB` with srun --mpi=pmix");
  sb->add_option("file", a->file, "job spec (YAML)")->required();
  sb->add_option("-o,--script", a->script_path, "write the script to FILE (default: stdout)")
      ->type_name("FILE");
  sb->add_flag("--force", a->force, "overwrite the -o file if it exists");
  sb->add_option("--nodes", a->nodes, "nodes")->type_name("N")->capture_default_str();
  sb->add_option("--ntasks-per-node", a->ntasks_per_node, "ranks per node")
      ->type_name("N")
      ->capture_default_str();
  sb->add_option("--cpus-per-task", a->cpus_per_task,
                 "CPUs per rank (default: the job's train.threads if > 0, else 1)")
      ->type_name("N");
  sb->add_option("--time", a->time,
                 "time limit: minutes, H:M:S, D-H:M:S... (default: the partition's)")
      ->type_name("TIME");
  sb->add_option("--partition", a->partition, "Slurm partition");
  sb->add_option("--account", a->account, "Slurm account");
  sb->add_option("--job-name", a->job_name, "Slurm job name (default: the job spec's name)");
  sb->add_option("--signal", a->signal, "[B:]SIG@SECONDS sent before the time limit, or none")
      ->type_name("SPEC")
      ->capture_default_str();
  sb->add_option("--output", a->output, "Slurm's job log (%j = job id, %x = job name)")
      ->type_name("PATTERN")
      ->capture_default_str();
  sb->add_flag("--requeue", a->requeue, "let Slurm requeue the job after preemption or failure");
  sb->add_option("--set", a->overrides,
                 "override a field for the run, e.g. --set train.steps=100 (repeatable)")
      ->type_name("KEY=VALUE");
  sb->callback([&ctx, a] {
    auto spec = config::LoadJobSpec(a->file, config::Limits(), a->overrides);
    if (!spec.ok()) return ReportError(spec.status(), ctx);
    auto script = RenderScript(*a, *spec);
    if (!script.ok()) return ReportError(script.status(), ctx);
    if (a->script_path.empty()) {
      std::fputs(script->c_str(), stdout);
      if (std::fflush(stdout) != 0) ReportError(IoError("stdout: write failed"), ctx);
      return;
    }
    Status st = WriteScript(a->script_path, *script, a->force);
    if (!st.ok()) return ReportError(st, ctx);
    std::fprintf(stderr, "wrote %s; submit it with: sbatch %s\n", a->script_path.c_str(),
                 ShellQuote(a->script_path).c_str());
  });
}

}  // namespace cohort::cli
