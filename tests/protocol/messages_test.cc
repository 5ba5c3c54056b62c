#include "proxy/protocol/messages.h"

#include <gtest/gtest.h>

#include <random>

namespace pgrelay::protocol {
namespace {

std::string StartupBody(std::initializer_list<std::pair<std::string, std::string>> params,
                        int32_t protocol = kProtocolV3) {
  std::string out;
  MessageWriter w(&out);
  w.Begin(0).Int32(protocol);
  for (const auto& [k, v] : params) w.CString(k).CString(v);
  w.Byte('\0').End();
  return out.substr(4);
}

TEST(MessagesTest, ParsesStartupPacket) {
  auto p = ParseStartupPacket(StartupBody({{"user", "app"}, {"database", "db"}, {"x", ""}}));
  ASSERT_EQ(p.kind, StartupPacket::Kind::kStartup);
  EXPECT_EQ(p.protocol, kProtocolV3);
  ASSERT_NE(p.Param("user"), nullptr);
  EXPECT_EQ(*p.Param("user"), "app");
  EXPECT_EQ(*p.Param("x"), "");
  EXPECT_EQ(p.Param("nope"), nullptr);
}

TEST(MessagesTest, ParsesSslGssAndCancelRequests) {
  std::string out;
  MessageWriter(&out).Begin(0).Int32(kSslRequestCode).End();
  EXPECT_EQ(ParseStartupPacket(out.substr(4)).kind, StartupPacket::Kind::kSslRequest);
  out.clear();
  MessageWriter(&out).Begin(0).Int32(kGssEncRequestCode).End();
  EXPECT_EQ(ParseStartupPacket(out.substr(4)).kind, StartupPacket::Kind::kGssEncRequest);
  out.clear();
  MessageWriter(&out).Begin(0).Int32(kCancelRequestCode).Int32(1234).Int32(-5).End();
  auto p = ParseStartupPacket(out.substr(4));
  ASSERT_EQ(p.kind, StartupPacket::Kind::kCancel);
  EXPECT_EQ(p.cancel_pid, 1234);
  EXPECT_EQ(p.cancel_key, -5);
}

TEST(MessagesTest, RejectsMalformedStartupPackets) {
  std::string body = StartupBody({{"user", "app"}});
  body.pop_back();  // no terminator
  EXPECT_EQ(ParseStartupPacket(body).kind, StartupPacket::Kind::kInvalid);
  EXPECT_EQ(ParseStartupPacket("ab").kind, StartupPacket::Kind::kInvalid);
  std::string cancel;
  MessageWriter(&cancel).Begin(0).Int32(kCancelRequestCode).Int32(1).End();
  EXPECT_EQ(ParseStartupPacket(cancel.substr(4)).kind, StartupPacket::Kind::kInvalid);
}

TEST(MessagesTest, RandomStartupBodiesNeverCrash) {
  std::mt19937 rng(3);
  for (int i = 0; i < 200000; ++i) {
    std::string body(rng() % 64, '\0');
    for (auto& c : body) c = static_cast<char>(rng() % 3 == 0 ? 0 : rng());
    if (rng() % 2 && body.size() >= 4) WriteBe32(body.data(), kProtocolV3);
    auto p = ParseStartupPacket(body);
    if (p.kind == StartupPacket::Kind::kInvalid) {
      EXPECT_FALSE(p.error.empty());
    }
  }
}

TEST(MessagesTest, ErrorResponseRoundTrips) {
  std::string out;
  AppendError(&out, "FATAL", "28P01", "password authentication failed", "try again");
  ASSERT_EQ(out[0], 'E');
  EXPECT_EQ(ReadBe32(out.data() + 1), out.size() - 1);
  auto f = ParseErrorFields(std::string_view(out).substr(5));
  EXPECT_EQ(f.severity, "FATAL");
  EXPECT_EQ(f.code, "28P01");
  EXPECT_EQ(f.message, "password authentication failed");
}

TEST(MessagesTest, ReaderFlagsShortReads) {
  MessageReader r(std::string_view("\x00\x01", 2));
  EXPECT_EQ(r.Int16(), 1);
  EXPECT_TRUE(r.ok());
  r.Int32();
  EXPECT_FALSE(r.ok());
  MessageReader r2("abc");
  r2.CString();
  EXPECT_FALSE(r2.ok());
}

}  // namespace
}  // namespace pgrelay::protocol
