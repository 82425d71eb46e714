#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/crc32c.h"
#include "common/status.h"

namespace cohort {
namespace {

TEST(StatusTest, OkAndErrorCarryCodeAndMessage) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.ToString(), "OK");
  Status bad = InvalidArgument("job.yaml: model.n_layer: out of range");
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.code(), Code::kInvalidArgument);
  EXPECT_EQ(bad.ToString(), "INVALID_ARGUMENT: job.yaml: model.n_layer: out of range");
  EXPECT_EQ(bad.WithContext("loading").message(), "loading: job.yaml: model.n_layer: out of range");
  EXPECT_TRUE(ok.WithContext("x").ok());
}

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("odd: " + std::to_string(x));
  return x / 2;
}

Status Quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  *out = q;
  return Status::Ok();
}

TEST(StatusTest, MacrosPropagateTheFirstError) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status s = Quarter(6, &out);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd: 3");
}

TEST(StatusDeathTest, ValueOfAnErrorResultAborts) {
  Result<int> r = Half(3);
  EXPECT_DEATH((void)r.value(), "odd: 3");
}

TEST(Crc32cTest, StandardCheckValues) {
  // Check value of CRC-32C (RFC 3720, and the common "123456789" catalogue value).
  const std::string s = "123456789";
  EXPECT_EQ(Crc32c(s.data(), s.size()), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  std::vector<unsigned char> zeros(32, 0);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  std::vector<unsigned char> ones(32, 0xff);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
}

TEST(Crc32cTest, ExtendEqualsOneShot) {
  std::vector<unsigned char> data(100000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 31 + 7);
  uint32_t whole = Crc32c(data.data(), data.size());
  uint32_t part = Crc32c(data.data(), 1234);
  part = Crc32cExtend(part, data.data() + 1234, data.size() - 1234);
  EXPECT_EQ(whole, part);
  data[5000] ^= 0x10;  // one flipped bit changes the checksum
  EXPECT_NE(whole, Crc32c(data.data(), data.size()));
}

}  // namespace
}  // namespace cohort
