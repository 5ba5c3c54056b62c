#include "proxy/protocol/md5_auth.h"

#include <gtest/gtest.h>

#include <string>

namespace pgrelay::protocol {
namespace {

const std::string kSalt = "\x01\x02\x03\x04";
// Computed independently with Python hashlib:
//   h = hashlib.md5(b"postgrespostgres").hexdigest()
//   "md5" + hashlib.md5(h.encode() + bytes([1, 2, 3, 4])).hexdigest()
constexpr char kResponse[] = "md568be9ed08db75f318087ab337aaea044";

TEST(Md5AuthTest, StoredHashKnownVector) {
  EXPECT_EQ(Md5StoredHash("postgres", "postgres"), "md53175bce1d3201d16594cebf9d7eb3f9d");
}

TEST(Md5AuthTest, ResponseKnownVector) {
  EXPECT_EQ(Md5Response("postgres", "postgres", kSalt), kResponse);
}

TEST(Md5AuthTest, VerifyAcceptsRightResponse) {
  EXPECT_TRUE(Md5Verify("postgres", "postgres", kSalt, kResponse));
}

TEST(Md5AuthTest, VerifyRejectsWrongResponse) {
  EXPECT_FALSE(Md5Verify("postgres", "wrong", kSalt, kResponse));
  EXPECT_FALSE(Md5Verify("other", "postgres", kSalt, kResponse));
  EXPECT_FALSE(Md5Verify("postgres", "postgres", "\x01\x02\x03\x05", kResponse));
  EXPECT_FALSE(Md5Verify("postgres", "postgres", kSalt, ""));
  EXPECT_FALSE(Md5Verify("postgres", "postgres", kSalt, "md568be9ed08db75f318087ab337aaea04"));
  EXPECT_FALSE(Md5Verify("postgres", "postgres", kSalt, "md568BE9ED08DB75F318087AB337AAEA044"));
  EXPECT_FALSE(Md5Verify("postgres", "postgres", kSalt, Md5StoredHash("postgres", "postgres")));
}

}  // namespace
}  // namespace pgrelay::protocol
