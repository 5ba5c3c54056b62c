// Splits a PostgreSQL v3 byte stream (1-byte type, int32 length incl. itself, body) into
// messages, incrementally, without copying. Messages whose type is "inspected" are returned
// whole; all others may stream through in pieces (DataRow, CopyData of any size).
// Owned by one relay direction; not thread-safe.
#pragma once

#include <bitset>
#include <cstdint>
#include <string_view>

namespace pgrelay::protocol {

class FrameScanner {
 public:
  enum class Kind {
    kWhole,      // `bytes` is one complete message (header included)
    kPartial,    // `bytes` is a piece of a streamed (non-inspected) message
    kNeedMore,   // not enough data; `needed` = bytes required at the front of the input
    kBadLength,  // length field < 4: protocol violation (08P01)
    kTooLarge,   // length field > max_message_size (54000)
  };

  struct Frame {
    Kind kind = Kind::kNeedMore;
    char type = 0;
    uint32_t length = 0;       // the message's length field
    std::string_view bytes;    // kWhole / kPartial: consume exactly these bytes
    size_t needed = 0;         // kNeedMore: total bytes needed from the input's start
    bool first_piece = false;  // kPartial: this piece starts the message (header included)
  };

  explicit FrameScanner(uint32_t max_message_size) : max_message_size_(max_message_size) {}

  void Inspect(char type) { inspect_.set(static_cast<unsigned char>(type)); }
  bool inspected(char type) const { return inspect_.test(static_cast<unsigned char>(type)); }
  // True while a streamed message is only partly through.
  bool in_message() const { return stream_remaining_ != 0; }
  char current_type() const { return stream_type_; }

  // Looks at the unconsumed input. On kWhole/kPartial the caller must consume frame.bytes
  // before calling again; on kNeedMore it must keep the bytes and append more.
  Frame Next(std::string_view input);

 private:
  uint32_t max_message_size_;
  std::bitset<256> inspect_;
  uint64_t stream_remaining_ = 0;
  char stream_type_ = 0;
};

}  // namespace pgrelay::protocol
