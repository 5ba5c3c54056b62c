#include "proxy/protocol/frame_scanner.h"

#include <algorithm>

#include "proxy/protocol/messages.h"

namespace pgrelay::protocol {

FrameScanner::Frame FrameScanner::Next(std::string_view input) {
  Frame f;
  if (stream_remaining_ != 0) {
    if (input.empty()) {
      f.needed = 1;
      return f;
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(stream_remaining_, input.size()));
    stream_remaining_ -= n;
    f.kind = Kind::kPartial;
    f.type = stream_type_;
    f.bytes = input.substr(0, n);
    return f;
  }
  if (input.size() < 5) {
    f.needed = 5;
    return f;
  }
  f.type = input[0];
  f.length = ReadBe32(input.data() + 1);
  if (f.length < 4) {
    f.kind = Kind::kBadLength;
    return f;
  }
  if (f.length > max_message_size_) {
    f.kind = Kind::kTooLarge;
    return f;
  }
  const uint64_t total = uint64_t{f.length} + 1;
  if (input.size() >= total) {
    f.kind = Kind::kWhole;
    f.bytes = input.substr(0, static_cast<size_t>(total));
    return f;
  }
  if (inspected(f.type)) {
    f.needed = static_cast<size_t>(total);
    return f;
  }
  // Stream the message through: hand out what is here, remember what is still to come.
  stream_type_ = f.type;
  stream_remaining_ = total - input.size();
  f.kind = Kind::kPartial;
  f.first_piece = true;
  f.bytes = input;
  return f;
}

}  // namespace pgrelay::protocol
