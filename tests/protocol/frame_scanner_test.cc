#include "proxy/protocol/frame_scanner.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "proxy/protocol/messages.h"

namespace pgrelay::protocol {
namespace {

std::string Msg(char type, std::string_view body) {
  std::string out;
  MessageWriter(&out).Begin(type).Bytes(body).End();
  return out;
}

// Feeds `stream` in chunks of the given sizes (as a relay would, keeping unconsumed bytes) and
// returns, per message, its type and the concatenation of the bytes handed out.
struct Collected {
  std::vector<std::pair<char, std::string>> messages;
  bool error = false;
  FrameScanner::Kind error_kind = FrameScanner::Kind::kNeedMore;
};

Collected Drive(FrameScanner& scanner, const std::string& stream,
                const std::vector<size_t>& chunks) {
  Collected c;
  std::string pending;
  size_t pos = 0;
  size_t chunk_index = 0;
  while (pos < stream.size() || !pending.empty()) {
    size_t n = chunks.empty() ? stream.size() : chunks[chunk_index++ % chunks.size()];
    n = std::min(n, stream.size() - pos);
    pending.append(stream, pos, n);
    pos += n;
    for (;;) {
      auto f = scanner.Next(pending);
      if (f.kind == FrameScanner::Kind::kWhole || f.kind == FrameScanner::Kind::kPartial) {
        bool starts = f.kind == FrameScanner::Kind::kWhole || f.first_piece;
        if (starts) c.messages.emplace_back(f.type, "");
        c.messages.back().second.append(f.bytes);
        pending.erase(0, f.bytes.size());
        continue;
      }
      if (f.kind != FrameScanner::Kind::kNeedMore) {
        c.error = true;
        c.error_kind = f.kind;
        return c;
      }
      break;
    }
    if (n == 0 && pos >= stream.size()) break;  // truncated stream: nothing more will come
  }
  return c;
}

TEST(FrameScannerTest, SplitsWholeMessages) {
  FrameScanner scanner(1 << 20);
  std::string stream = Msg('Q', std::string("select 1") + '\0') + Msg('Z', "I") + Msg('X', "");
  auto c = Drive(scanner, stream, {});
  ASSERT_EQ(c.messages.size(), 3u);
  EXPECT_EQ(c.messages[0].first, 'Q');
  EXPECT_EQ(c.messages[1].second, Msg('Z', "I"));
  EXPECT_EQ(c.messages[2].second, Msg('X', ""));
}

TEST(FrameScannerTest, InspectedMessagesAreWholeEvenWhenFedByteByByte) {
  FrameScanner scanner(1 << 20);
  scanner.Inspect('Q');
  const std::string body(5000, 'a');
  std::string stream = Msg('Q', body);
  std::string pending;
  int wholes = 0;
  for (char ch : stream) {
    pending.push_back(ch);
    auto f = scanner.Next(pending);
    ASSERT_NE(f.kind, FrameScanner::Kind::kPartial);
    if (f.kind == FrameScanner::Kind::kWhole) {
      ++wholes;
      EXPECT_EQ(f.bytes, stream);
      pending.erase(0, f.bytes.size());
    } else {
      EXPECT_EQ(f.kind, FrameScanner::Kind::kNeedMore);
      EXPECT_GT(f.needed, pending.size());
    }
  }
  EXPECT_EQ(wholes, 1);
}

TEST(FrameScannerTest, StreamsLargeNonInspectedMessagesInPieces) {
  FrameScanner scanner(1 << 30);
  const std::string big(100000, 'd');
  std::string stream = Msg('D', big) + Msg('C', "SELECT 1");
  std::vector<std::string_view> pieces;
  auto c = Drive(scanner, stream, {4096});
  ASSERT_EQ(c.messages.size(), 2u);
  EXPECT_EQ(c.messages[0].second, Msg('D', big));
  EXPECT_EQ(c.messages[1].second, Msg('C', "SELECT 1"));
  EXPECT_FALSE(scanner.in_message());
}

TEST(FrameScannerTest, RejectsLengthBelowFour) {
  FrameScanner scanner(1 << 20);
  std::string bad = {'Q', 0, 0, 0, 3};
  auto f = scanner.Next(bad);
  EXPECT_EQ(f.kind, FrameScanner::Kind::kBadLength);
}

TEST(FrameScannerTest, RejectsLengthAboveLimitIncludingHugeLengths) {
  FrameScanner scanner(1 << 20);
  std::string huge = {'Q', '\x7f', '\xff', '\xff', '\xff'};
  EXPECT_EQ(scanner.Next(huge).kind, FrameScanner::Kind::kTooLarge);
  std::string max_u32 = {'d', '\xff', '\xff', '\xff', '\xff'};
  EXPECT_EQ(scanner.Next(max_u32).kind, FrameScanner::Kind::kTooLarge);
  std::string just_over = Msg('Q', std::string((1 << 20) - 3, 'x'));
  EXPECT_EQ(scanner.Next(just_over).kind, FrameScanner::Kind::kTooLarge);
  std::string at_limit = Msg('Q', std::string((1 << 20) - 4, 'x'));
  EXPECT_EQ(scanner.Next(at_limit).kind, FrameScanner::Kind::kWhole);
}

// Any chunking of a valid stream yields exactly the original messages.
TEST(FrameScannerTest, RandomChunkingPreservesEveryMessage) {
  std::mt19937 rng(42);
  for (int round = 0; round < 300; ++round) {
    FrameScanner scanner(1 << 24);
    scanner.Inspect('Q');
    scanner.Inspect('Z');
    std::string stream;
    std::vector<std::string> expected;
    int count = 1 + rng() % 40;
    for (int i = 0; i < count; ++i) {
      const char types[] = {'Q', 'D', 'Z', 'd', 'C', 'T'};
      char t = types[rng() % 6];
      std::string body(rng() % 3 == 0 ? rng() % 70000 : rng() % 40,
                       static_cast<char>('a' + i % 26));
      expected.push_back(Msg(t, body));
      stream += expected.back();
    }
    std::vector<size_t> chunks;
    for (int i = 0; i < 8; ++i) chunks.push_back(1 + rng() % 9000);
    auto c = Drive(scanner, stream, chunks);
    ASSERT_FALSE(c.error);
    ASSERT_EQ(c.messages.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(c.messages[i].second, expected[i]);
  }
}

// Fuzz: millions of random bytes in random chunks never crash, never read out of bounds (ASan
// in CI), and every byte handed out belongs to the input, in order.
TEST(FrameScannerTest, RandomInputNeverCrashesOrLosesBytes) {
  std::mt19937_64 rng(7);
  size_t total_bytes = 0;
  int errors = 0;
  for (int round = 0; round < 1000000; ++round) {
    FrameScanner scanner(1 + rng() % (1 << 16));
    if (rng() % 2) scanner.Inspect(static_cast<char>(rng()));
    std::string input(rng() % 128, '\0');
    for (auto& ch : input) {
      // Bias towards small lengths so messages complete often.
      ch = static_cast<char>(rng() % 4 == 0 ? 0 : rng());
    }
    total_bytes += input.size();
    std::string handed_out;
    std::string pending;
    size_t pos = 0;
    bool failed = false;
    while (pos < input.size() && !failed) {
      size_t n = std::min<size_t>(1 + rng() % 16, input.size() - pos);
      pending.append(input, pos, n);
      pos += n;
      for (;;) {
        auto f = scanner.Next(pending);
        if (f.kind == FrameScanner::Kind::kWhole || f.kind == FrameScanner::Kind::kPartial) {
          ASSERT_GT(f.bytes.size(), 0u);
          ASSERT_LE(f.bytes.size(), pending.size());
          ASSERT_EQ(f.bytes.data(), pending.data());
          handed_out.append(f.bytes);
          pending.erase(0, f.bytes.size());
          continue;
        }
        if (f.kind != FrameScanner::Kind::kNeedMore) {
          failed = true;
          ++errors;
        } else {
          ASSERT_GT(f.needed, pending.size());
        }
        break;
      }
    }
    ASSERT_EQ(input.compare(0, handed_out.size(), handed_out), 0);
  }
  EXPECT_GT(total_bytes, 50'000'000u);
  EXPECT_GT(errors, 0);  // random input does hit the length checks
}

}  // namespace
}  // namespace pgrelay::protocol
