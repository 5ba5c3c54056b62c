// Reads whole messages from one connection through an IoBuffer, for the phases where pgrelay itself
// talks to a peer (client start-up and authentication, backend login). The relay streams with
// FrameScanner instead. Owned by one session; not thread-safe.
#pragma once

#include <string_view>

#include "proxy/asio_common.h"
#include "proxy/buffer_pool.h"
#include "proxy/transport.h"

namespace pgrelay::proxy {

enum class ReadStatus { kOk, kClosed, kBadLength, kTooLarge };

class WireStream {
 public:
  WireStream(Transport& transport, IoBuffer& buffer) : transport_(transport), buffer_(buffer) {}

  // An untyped start-up packet; *body excludes the length word. Lengths outside
  // [8, max_length] are kBadLength.
  awaitable<ReadStatus> ReadStartup(std::string_view* body, uint32_t max_length);
  // A typed message; *body excludes type and length. Valid until the next read.
  awaitable<ReadStatus> ReadMessage(char* type, std::string_view* body, uint32_t max_length);
  awaitable<error_code> Write(std::string_view bytes);
  // Drops the message returned last; the relay takes the buffer over after this.
  void ConsumeLast() {
    buffer_.Consume(last_size_);
    last_size_ = 0;
  }

 private:
  awaitable<bool> Fill(size_t total);

  Transport& transport_;
  IoBuffer& buffer_;
  size_t last_size_ = 0;
};

}  // namespace pgrelay::proxy
