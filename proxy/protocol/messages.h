// PostgreSQL v3 message codes, a writer that builds messages and a bounds-checked reader that
// parses them. Plain value types over bytes: no I/O. Not thread-safe per instance.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgrelay::protocol {

inline constexpr int32_t kProtocolV3 = 196608;  // 3.0
inline constexpr int32_t kSslRequestCode = 80877103;
inline constexpr int32_t kGssEncRequestCode = 80877104;
inline constexpr int32_t kCancelRequestCode = 80877102;
inline constexpr uint32_t kMaxStartupPacketLength = 10000;  // as PostgreSQL's postmaster

// Authentication request codes ('R' messages).
enum AuthCode : int32_t {
  kAuthOk = 0,
  kAuthCleartext = 3,
  kAuthMd5 = 5,
  kAuthSasl = 10,
  kAuthSaslContinue = 11,
  kAuthSaslFinal = 12,
};

inline uint32_t ReadBe32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | uint32_t{u[3]};
}
inline void WriteBe32(char* p, uint32_t v) {
  p[0] = static_cast<char>(v >> 24);
  p[1] = static_cast<char>(v >> 16);
  p[2] = static_cast<char>(v >> 8);
  p[3] = static_cast<char>(v);
}

// Appends messages to a byte string. Begin(type) ... End() fills in the length.
class MessageWriter {
 public:
  explicit MessageWriter(std::string* out) : out_(out) {}
  MessageWriter& Begin(char type);  // type 0: untyped (startup-style) message
  MessageWriter& Int32(int32_t v);
  MessageWriter& Int16(int16_t v);
  MessageWriter& Byte(char c);
  MessageWriter& CString(std::string_view s);  // bytes + NUL
  MessageWriter& Bytes(std::string_view s);
  void End();

 private:
  std::string* out_;
  size_t start_ = 0;
};

// Reads fields from a message body. Any read past the end sets ok() to false and returns empty
// values, so callers check ok() once at the end.
class MessageReader {
 public:
  explicit MessageReader(std::string_view body) : data_(body) {}
  int32_t Int32();
  int16_t Int16();
  char Byte();
  std::string_view CString();
  std::string_view Bytes(size_t n);
  std::string_view Rest();
  bool ok() const { return ok_; }
  bool AtEnd() const { return pos_ == data_.size(); }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// SQLSTATE codes pgrelay itself reports.
namespace sqlstate {
inline constexpr const char* kProtocolViolation = "08P01";
inline constexpr const char* kConnectionFailure = "08006";
inline constexpr const char* kUnableToConnect = "08001";
inline constexpr const char* kFeatureNotSupported = "0A000";
inline constexpr const char* kUndefinedObject = "42704";
inline constexpr const char* kCantChangeRuntimeParam = "55P02";
inline constexpr const char* kInvalidParameterValue = "22023";
inline constexpr const char* kInvalidPassword = "28P01";
inline constexpr const char* kInvalidAuthorization = "28000";
inline constexpr const char* kTooManyConnections = "53300";
inline constexpr const char* kProgramLimitExceeded = "54000";
inline constexpr const char* kIdleSessionTimeout = "57P05";
inline constexpr const char* kAdminShutdown = "57P01";
inline constexpr const char* kCannotConnectNow = "57P03";
}  // namespace sqlstate

// Appends an ErrorResponse ('E') or NoticeResponse ('N') with severity, SQLSTATE and message
// (and an optional hint).
void AppendError(std::string* out, std::string_view severity, std::string_view code,
                 std::string_view message, std::string_view hint = {});
void AppendNotice(std::string* out, std::string_view severity, std::string_view code,
                  std::string_view message);
void AppendAuthRequest(std::string* out, int32_t code, std::string_view data = {});
void AppendParameterStatus(std::string* out, std::string_view name, std::string_view value);
void AppendBackendKeyData(std::string* out, int32_t pid, int32_t key);
void AppendReadyForQuery(std::string* out, char status);

// Fields of an ErrorResponse/NoticeResponse body, for logs and decisions.
struct ErrorFields {
  std::string severity;
  std::string code;
  std::string message;
};
ErrorFields ParseErrorFields(std::string_view body);

// The packet a client opens a connection with (length prefix removed).
struct StartupPacket {
  enum class Kind { kStartup, kSslRequest, kGssEncRequest, kCancel, kInvalid };
  Kind kind = Kind::kInvalid;
  int32_t protocol = 0;
  std::vector<std::pair<std::string, std::string>> params;  // kStartup, in order
  int32_t cancel_pid = 0;                                   // kCancel
  int32_t cancel_key = 0;                                   // kCancel
  std::string error;                                        // kInvalid: why

  const std::string* Param(std::string_view name) const;
};
StartupPacket ParseStartupPacket(std::string_view body);

}  // namespace pgrelay::protocol
