#include "dataloader/corpus.h"

#include <fnmatch.h>

#include <algorithm>

#include "storage/file_util.h"

namespace cohort::data {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// How a word joins its neighbours in running text.
struct Joining {
  bool space_before = true;
  bool space_after = true;
};

Joining JoiningOf(std::string_view word) {
  static constexpr std::string_view kAttachLeft[] = {",", ".", ";", ":", "?", "!", ")", "]", "}",
                                                     "n't", "'s", "'re", "'ve", "'ll", "'d", "'m"};
  static constexpr std::string_view kAttachRight[] = {"(", "[", "{", "$"};
  Joining j;
  if (std::find(std::begin(kAttachLeft), std::end(kAttachLeft), word) != std::end(kAttachLeft)) {
    j.space_before = false;
  }
  if (std::find(std::begin(kAttachRight), std::end(kAttachRight), word) != std::end(kAttachRight)) {
    j.space_after = false;
  }
  return j;
}

// Builds one paragraph from words, applying the spacing rules.
class ParagraphBuilder {
 public:
  void Add(std::string_view word) {
    Joining j;
    if (word == "``") {
      word = "\"";
      j.space_after = false;
    } else if (word == "''") {
      word = "\"";
      j.space_before = false;
    } else if (word == "'") {
      // Brown does not mark which; alternate, starting with an opening quote.
      if (single_quote_open_) {
        j.space_before = false;
      } else {
        j.space_after = false;
      }
      single_quote_open_ = !single_quote_open_;
    } else {
      j = JoiningOf(word);
      // "Ala./np ./." at a sentence end: English writes one period after an abbreviation.
      if (word == "." && text_.ends_with('.')) return;
    }
    if (!text_.empty() && j.space_before && space_pending_) text_.push_back(' ');
    text_.append(word);
    space_pending_ = j.space_after;
  }

  bool empty() const { return text_.empty(); }

  // Appends the paragraph as a line to `out` and starts a new one.
  void FlushTo(std::string* out) {
    if (!text_.empty()) {
      out->append(text_);
      out->push_back('\n');
    }
    text_.clear();
    space_pending_ = true;
    single_quote_open_ = false;
  }

 private:
  std::string text_;
  bool space_pending_ = true;
  bool single_quote_open_ = false;
};

}  // namespace

Result<CorpusFormat> ParseCorpusFormat(std::string_view name) {
  if (name == "text") return CorpusFormat::kText;
  if (name == "brown") return CorpusFormat::kBrown;
  return InvalidArgument("unknown corpus format \"" + std::string(name) + "\" (known: text, brown)");
}

std::string_view CorpusFormatName(CorpusFormat format) {
  return format == CorpusFormat::kBrown ? "brown" : "text";
}

Result<std::vector<std::string>> ExpandCorpusInputs(const std::vector<std::string>& inputs,
                                                    CorpusFormat format) {
  if (inputs.empty()) return InvalidArgument("no input files given");
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    if (storage::IsDirectory(input)) {
      // List the directory and match the names, rather than globbing "<input>/*.txt": the
      // directory's name may itself contain glob metacharacters.
      const char* pattern = format == CorpusFormat::kBrown ? "c[a-r][0-9][0-9]" : "*.txt";
      ASSIGN_OR_RETURN(std::vector<std::string> names, storage::ListDirectory(input));
      size_t matched = 0;
      for (const std::string& name : names) {
        if (::fnmatch(pattern, name.c_str(), FNM_PERIOD) != 0) continue;
        files.push_back(input + "/" + name);
        ++matched;
      }
      if (matched == 0) {
        return NotFound(input + ": directory has no " +
                        (format == CorpusFormat::kBrown ? "Brown corpus files (ca01 .. cr09)" : "*.txt files"));
      }
    } else if (storage::HasGlobMagic(input)) {
      ASSIGN_OR_RETURN(std::vector<std::string> matches, storage::ExpandGlob(input));
      files.insert(files.end(), matches.begin(), matches.end());
    } else {
      files.push_back(input);  // existence is checked when it is read, with a precise error
    }
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

Result<std::string> BrownToText(std::string_view tagged, const std::string& source) {
  std::string out;
  out.reserve(tagged.size() * 3 / 4);
  ParagraphBuilder para;
  std::vector<std::string_view> words;
  bool after_blank = true;
  size_t pos = 0;
  while (pos < tagged.size()) {
    size_t eol = tagged.find('\n', pos);
    if (eol == std::string_view::npos) eol = tagged.size();
    const size_t line_start = pos;
    std::string_view line = tagged.substr(pos, eol - pos);
    pos = eol + 1;

    // Split into tokens and strip tags.
    words.clear();
    bool all_headline = true;
    for (size_t i = 0; i < line.size();) {
      while (i < line.size() && IsBlank(line[i])) ++i;
      if (i == line.size()) break;
      size_t end = i;
      while (end < line.size() && !IsBlank(line[end])) ++end;
      std::string_view token = line.substr(i, end - i);
      size_t slash = token.rfind('/');
      if (slash == std::string_view::npos || slash == 0 || slash + 1 == token.size()) {
        return InvalidArgument(source + ": byte offset " + std::to_string(line_start + i) + ": token \"" +
                               std::string(token.substr(0, 40)) +
                               "\" is not word/TAG (is this a Brown corpus file?)");
      }
      words.push_back(token.substr(0, slash));
      all_headline = all_headline && token.ends_with("-hl");
      i = end;
    }
    if (words.empty()) {  // blank line: paragraph boundary
      after_blank = true;
      continue;
    }
    const bool headline = all_headline;
    if (after_blank || line.front() == '\t' || headline) para.FlushTo(&out);
    for (std::string_view w : words) para.Add(w);
    if (headline) para.FlushTo(&out);  // a headline is a paragraph of its own
    after_blank = false;
  }
  para.FlushTo(&out);
  return out;
}

Result<Document> ReadDocument(const std::string& path, CorpusFormat format) {
  Document doc;
  doc.source = path;
  ASSIGN_OR_RETURN(std::string raw, storage::ReadFileToString(path));
  if (format == CorpusFormat::kText) {
    doc.text = std::move(raw);
  } else {
    ASSIGN_OR_RETURN(doc.text, BrownToText(raw, path));
  }
  return doc;
}

Result<bool> DocumentIsEmpty(const std::string& path, CorpusFormat format) {
  if (format == CorpusFormat::kText) {
    uint64_t size = 0;
    ASSIGN_OR_RETURN(storage::ScopedFd fd, storage::OpenRegularFile(path, &size));
    return size == 0;
  }
  ASSIGN_OR_RETURN(Document doc, ReadDocument(path, format));
  return doc.text.empty();
}

}  // namespace cohort::data
