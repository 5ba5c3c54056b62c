#include "proxy/protocol/crypto_util.h"

#include <gtest/gtest.h>

#include <string>

namespace pgrelay::protocol {
namespace {

using namespace std::string_literals;

std::string Hex(const Sha256Digest& d) { return HexEncode(AsView(d)); }

TEST(CryptoUtilTest, Base64Rfc4648Vectors) {
  const std::pair<std::string, std::string> kVectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : kVectors) {
    EXPECT_EQ(Base64Encode(plain), encoded);
    EXPECT_EQ(Base64Decode(encoded), plain);
  }
}

TEST(CryptoUtilTest, Base64RoundTripsBinary) {
  for (size_t n = 0; n <= 70; ++n) {
    std::string bytes = RandomBytes(n);
    std::optional<std::string> back = Base64Decode(Base64Encode(bytes));
    ASSERT_TRUE(back.has_value()) << n;
    EXPECT_EQ(*back, bytes) << n;
  }
  std::string with_nul = "a\0b\xff\x80"s;
  EXPECT_EQ(Base64Decode(Base64Encode(with_nul)), with_nul);
}

TEST(CryptoUtilTest, Base64RejectsMalformed) {
  const std::string kBad[] = {
      "Zg",          // missing padding
      "Zg=",         // wrong length
      "Z===",        // too much padding
      "====",        // padding only
      "=Zg=",        // padding first
      "Zg==Zg==",    // padding in the middle
      "Zm9v\n",      // whitespace
      "Zm 9v",       // whitespace
      "Zm9-",        // base64url alphabet
      "Zm9_",        // base64url alphabet
      "Zh==",        // non-canonical: unused bits set
      "Zm9=",        // non-canonical: unused bits set
      "Zm9v\0AAA"s,  // NUL
      "\xff\xff\xff\xff",
  };
  for (const std::string& text : kBad) EXPECT_FALSE(Base64Decode(text).has_value()) << text;
}

TEST(CryptoUtilTest, HexEncode) {
  EXPECT_EQ(HexEncode(""), "");
  EXPECT_EQ(HexEncode("\x00\x01\x7f\x80\xff\x10"s), "00017f80ff10");
}

TEST(CryptoUtilTest, Sha256Abc) {
  EXPECT_EQ(Hex(Sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Hex(Sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(CryptoUtilTest, HmacSha256Rfc4231Case2) {
  EXPECT_EQ(Hex(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(CryptoUtilTest, Pbkdf2HmacSha256KnownVectors) {
  // RFC 7914 section 11 (first 32 bytes of the 64-byte output).
  EXPECT_EQ(Hex(Pbkdf2HmacSha256("passwd", "salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc");
  // Widely published vector; also matches Python hashlib.pbkdf2_hmac('sha256', ...).
  EXPECT_EQ(Hex(Pbkdf2HmacSha256("password", "salt", 4096)),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a");
}

TEST(CryptoUtilTest, Md5Hex) {
  EXPECT_EQ(Md5Hex(""), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(Md5Hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
}

TEST(CryptoUtilTest, RandomBytes) {
  EXPECT_EQ(RandomBytes(0).size(), 0u);
  EXPECT_EQ(RandomBytes(18).size(), 18u);
  EXPECT_NE(RandomBytes(32), RandomBytes(32));
}

TEST(CryptoUtilTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

}  // namespace
}  // namespace pgrelay::protocol
