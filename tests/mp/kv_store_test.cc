// The rendezvous stores behind the Gloo backend: the file store and the TCP store (server and
// client), including their limits, deadlines and failure messages. One process, threads.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "collectives/kv_store.h"

namespace cohort::collectives {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string MakeTempDir() {
  std::string templ = (std::filesystem::temp_directory_path() / "kv_store_test.XXXXXX").string();
  char* d = ::mkdtemp(templ.data());
  EXPECT_NE(d, nullptr);
  return templ;
}

// The behaviour both stores share; `other` is a second client of the same store.
void ExerciseStore(KvStore& s, KvStore& other) {
  EXPECT_EQ(s.Get("job/a").status().code(), Code::kNotFound);
  ASSERT_TRUE(s.Set("job/a", std::string("v\0x", 3)).ok());
  auto v = s.Get("job/a");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(*v, std::string("v\0x", 3));  // binary values survive
  ASSERT_TRUE(s.Set("job/a", "second").ok());
  EXPECT_EQ(*s.Get("job/a"), "second");
  ASSERT_TRUE(s.Set("job/empty", "").ok());
  EXPECT_EQ(*s.Get("job/empty"), "");
  const std::string big(size_t{3} << 20, 'z');
  ASSERT_TRUE(s.Set("job/big", big).ok());
  EXPECT_EQ(*s.Get("job/big"), big);

  EXPECT_TRUE(s.Wait({"job/a", "job/big"}, 100ms).ok());
  const auto start = Clock::now();
  Status timed_out = s.Wait({"job/a", "job/missing", "job/gone"}, 300ms);
  EXPECT_EQ(timed_out.code(), Code::kDeadlineExceeded) << timed_out.ToString();
  EXPECT_THAT(timed_out.message(), HasSubstr("job/missing, job/gone"));
  EXPECT_LT(Clock::now() - start, 3s);

  // A key that appears later wakes the waiter.
  std::thread writer([&] {
    std::this_thread::sleep_for(200ms);
    EXPECT_TRUE(other.Set("job/late", "here").ok());
  });
  Status late = s.Wait({"job/late"}, 10s);
  EXPECT_TRUE(late.ok()) << late.ToString();
  writer.join();
  EXPECT_EQ(*s.Get("job/late"), "here");

  EXPECT_TRUE(s.Delete("job/late").ok());
  EXPECT_TRUE(s.Delete("job/late").ok());  // deleting twice is fine
  EXPECT_EQ(s.Get("job/late").status().code(), Code::kNotFound);

  // Limits and key rules are enforced before anything is sent or written.
  EXPECT_EQ(s.Set("job/huge", std::string(kKvMaxValueBytes + 1, 'x')).code(), Code::kInvalidArgument);
  for (const char* bad : {"", "../x", "a//b", "a/./b", "/abs", "sp ace", "a\nb"}) {
    EXPECT_EQ(s.Set(bad, "x").code(), Code::kInvalidArgument) << bad;
  }
  EXPECT_EQ(s.Set(std::string(kKvMaxKeyBytes + 1, 'k'), "x").code(), Code::kInvalidArgument);
}

TEST(FileKvStoreTest, SetGetWaitDelete) {
  const std::string dir = MakeTempDir();
  auto s = OpenFileKvStore(dir + "/nested/store");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->Describe(), "file://" + dir + "/nested/store");
  auto writer = OpenFileKvStore(dir + "/nested/store");
  ASSERT_TRUE(writer.ok());
  ExerciseStore(**s, **writer);
  std::filesystem::remove_all(dir);
}

TEST(FileKvStoreTest, RejectsRelativeDirectory) {
  EXPECT_EQ(OpenFileKvStore("relative/dir").status().code(), Code::kInvalidArgument);
}

TEST(TcpKvStoreTest, SetGetWaitDelete) {
  auto server = KvStoreServer::Start(0);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto s = ConnectTcpKvStore("127.0.0.1", (*server)->port(), 5s);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto other = ConnectTcpKvStore("localhost", (*server)->port(), 5s);  // by name, too
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  ExerciseStore(**s, **other);
  EXPECT_EQ(*(*other)->Get("job/a"), "second");
}

TEST(TcpKvStoreTest, ClientRetriesUntilTheServerStarts) {
  int port = 0;
  {
    auto probe = KvStoreServer::Start(0);
    ASSERT_TRUE(probe.ok());
    port = (*probe)->port();
  }
  std::unique_ptr<KvStoreServer> late;
  std::thread starter([&] {
    std::this_thread::sleep_for(300ms);
    auto started = KvStoreServer::Start(port);
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    late = std::move(started).value();
  });
  auto s = ConnectTcpKvStore("127.0.0.1", port, 10s);
  starter.join();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE((*s)->Set("k", "v").ok());
}

TEST(TcpKvStoreTest, UnreachableServerFailsAtTheDeadlineNamingTheAddress) {
  int port = 0;
  {
    auto probe = KvStoreServer::Start(0);
    ASSERT_TRUE(probe.ok());
    port = (*probe)->port();
  }
  const auto start = Clock::now();
  auto s = ConnectTcpKvStore("127.0.0.1", port, 500ms);
  EXPECT_LT(Clock::now() - start, 3s);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), Code::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr("tcp://127.0.0.1:" + std::to_string(port)));
  EXPECT_THAT(s.status().message(), HasSubstr("refused"));
}

TEST(TcpKvStoreTest, PortInUseIsAnError) {
  auto first = KvStoreServer::Start(0);
  ASSERT_TRUE(first.ok());
  auto second = KvStoreServer::Start((*first)->port());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("port " + std::to_string((*first)->port())));
  EXPECT_THAT(second.status().message(), HasSubstr("in use"));
}

TEST(TcpKvStoreTest, StoppedServerGivesUnavailableNotAHang) {
  auto server = KvStoreServer::Start(0);
  ASSERT_TRUE(server.ok());
  auto s = ConnectTcpKvStore("127.0.0.1", (*server)->port(), 5s);
  ASSERT_TRUE(s.ok());
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    server->reset();
  });
  const auto start = Clock::now();
  Status w = (*s)->Wait({"never"}, 30s);  // pending on the server when it stops
  stopper.join();
  EXPECT_LT(Clock::now() - start, 5s);
  EXPECT_EQ(w.code(), Code::kUnavailable) << w.ToString();
  EXPECT_EQ((*s)->Set("k", "v").code(), Code::kUnavailable);
}

TEST(TcpKvStoreTest, MalformedFramesCloseOnlyThatConnection) {
  auto server = KvStoreServer::Start(0);
  ASSERT_TRUE(server.ok());
  auto good = ConnectTcpKvStore("127.0.0.1", (*server)->port(), 5s);
  ASSERT_TRUE(good.ok());
  ASSERT_TRUE((*good)->Set("k", "v").ok());
  for (const std::string& junk : {std::string("\xff\xff\xff\xff", 4),  // frame too large
                                  std::string("\x02\x00\x00\x00\x63\x63", 6),  // unknown op 0x63
                                  std::string("\x05\x00\x00\x00\x02\xff\xff\xff\xff", 9)}) {  // bad string
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>((*server)->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_EQ(::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL), static_cast<ssize_t>(junk.size()));
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char c;
    EXPECT_EQ(::recv(fd, &c, 1, 0), 0) << "server should close a connection that sent junk";
    ::close(fd);
  }
  EXPECT_EQ(*(*good)->Get("k"), "v");
}

}  // namespace
}  // namespace cohort::collectives
