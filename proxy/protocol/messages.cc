#include "proxy/protocol/messages.h"

namespace pgrelay::protocol {

MessageWriter& MessageWriter::Begin(char type) {
  if (type != 0) out_->push_back(type);
  start_ = out_->size();
  out_->append(4, '\0');
  return *this;
}

MessageWriter& MessageWriter::Int32(int32_t v) {
  char b[4];
  WriteBe32(b, static_cast<uint32_t>(v));
  out_->append(b, 4);
  return *this;
}

MessageWriter& MessageWriter::Int16(int16_t v) {
  out_->push_back(static_cast<char>(static_cast<uint16_t>(v) >> 8));
  out_->push_back(static_cast<char>(v));
  return *this;
}

MessageWriter& MessageWriter::Byte(char c) {
  out_->push_back(c);
  return *this;
}

MessageWriter& MessageWriter::CString(std::string_view s) {
  out_->append(s);
  out_->push_back('\0');
  return *this;
}

MessageWriter& MessageWriter::Bytes(std::string_view s) {
  out_->append(s);
  return *this;
}

void MessageWriter::End() {
  WriteBe32(out_->data() + start_, static_cast<uint32_t>(out_->size() - start_));
}

int32_t MessageReader::Int32() {
  if (data_.size() - pos_ < 4) {
    ok_ = false;
    pos_ = data_.size();
    return 0;
  }
  int32_t v = static_cast<int32_t>(ReadBe32(data_.data() + pos_));
  pos_ += 4;
  return v;
}

int16_t MessageReader::Int16() {
  if (data_.size() - pos_ < 2) {
    ok_ = false;
    pos_ = data_.size();
    return 0;
  }
  const auto* u = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
  pos_ += 2;
  return static_cast<int16_t>((u[0] << 8) | u[1]);
}

char MessageReader::Byte() {
  if (pos_ >= data_.size()) {
    ok_ = false;
    return 0;
  }
  return data_[pos_++];
}

std::string_view MessageReader::CString() {
  size_t end = data_.find('\0', pos_);
  if (end == std::string_view::npos) {
    ok_ = false;
    pos_ = data_.size();
    return {};
  }
  std::string_view s = data_.substr(pos_, end - pos_);
  pos_ = end + 1;
  return s;
}

std::string_view MessageReader::Bytes(size_t n) {
  if (data_.size() - pos_ < n) {
    ok_ = false;
    pos_ = data_.size();
    return {};
  }
  std::string_view s = data_.substr(pos_, n);
  pos_ += n;
  return s;
}

std::string_view MessageReader::Rest() {
  std::string_view s = data_.substr(pos_);
  pos_ = data_.size();
  return s;
}

namespace {

void AppendErrorLike(std::string* out, char type, std::string_view severity, std::string_view code,
                     std::string_view message, std::string_view hint) {
  MessageWriter w(out);
  w.Begin(type);
  w.Byte('S').CString(severity);
  w.Byte('V').CString(severity);
  w.Byte('C').CString(code);
  w.Byte('M').CString(message);
  if (!hint.empty()) w.Byte('H').CString(hint);
  w.Byte('\0');
  w.End();
}

}  // namespace

void AppendError(std::string* out, std::string_view severity, std::string_view code,
                 std::string_view message, std::string_view hint) {
  AppendErrorLike(out, 'E', severity, code, message, hint);
}

void AppendNotice(std::string* out, std::string_view severity, std::string_view code,
                  std::string_view message) {
  AppendErrorLike(out, 'N', severity, code, message, {});
}

void AppendAuthRequest(std::string* out, int32_t code, std::string_view data) {
  MessageWriter(out).Begin('R').Int32(code).Bytes(data).End();
}

void AppendParameterStatus(std::string* out, std::string_view name, std::string_view value) {
  MessageWriter(out).Begin('S').CString(name).CString(value).End();
}

void AppendBackendKeyData(std::string* out, int32_t pid, int32_t key) {
  MessageWriter(out).Begin('K').Int32(pid).Int32(key).End();
}

void AppendReadyForQuery(std::string* out, char status) {
  MessageWriter(out).Begin('Z').Byte(status).End();
}

ErrorFields ParseErrorFields(std::string_view body) {
  ErrorFields f;
  MessageReader r(body);
  while (r.ok() && !r.AtEnd()) {
    char tag = r.Byte();
    if (tag == '\0') break;
    std::string_view v = r.CString();
    if (!r.ok()) break;
    switch (tag) {
      case 'V':
        f.severity = v;
        break;
      case 'S':
        if (f.severity.empty()) f.severity = v;
        break;
      case 'C':
        f.code = v;
        break;
      case 'M':
        f.message = v;
        break;
      default:
        break;
    }
  }
  return f;
}

const std::string* StartupPacket::Param(std::string_view name) const {
  for (const auto& [k, v] : params) {
    if (k == name) return &v;
  }
  return nullptr;
}

StartupPacket ParseStartupPacket(std::string_view body) {
  StartupPacket p;
  MessageReader r(body);
  int32_t code = r.Int32();
  if (!r.ok()) {
    p.error = "invalid length of startup packet";
    return p;
  }
  p.protocol = code;
  if (code == kSslRequestCode || code == kGssEncRequestCode) {
    if (!r.AtEnd()) {
      p.error = "invalid length of startup packet";
      return p;
    }
    p.kind = code == kSslRequestCode ? StartupPacket::Kind::kSslRequest
                                     : StartupPacket::Kind::kGssEncRequest;
    return p;
  }
  if (code == kCancelRequestCode) {
    p.cancel_pid = r.Int32();
    p.cancel_key = r.Int32();
    if (!r.ok() || !r.AtEnd()) {
      p.error = "invalid length of cancel request packet";
      return p;
    }
    p.kind = StartupPacket::Kind::kCancel;
    return p;
  }
  // A startup message: name/value pairs ending with an empty name.
  for (;;) {
    std::string_view name = r.CString();
    if (!r.ok()) {
      p.error = "invalid startup packet layout: expected terminator as last byte";
      return p;
    }
    if (name.empty()) break;
    std::string_view value = r.CString();
    if (!r.ok()) {
      p.error = "invalid startup packet layout: expected terminator as last byte";
      return p;
    }
    p.params.emplace_back(std::string(name), std::string(value));
  }
  if (!r.AtEnd()) {
    p.error = "invalid startup packet layout: expected terminator as last byte";
    return p;
  }
  p.kind = StartupPacket::Kind::kStartup;
  return p;
}

}  // namespace pgrelay::protocol
