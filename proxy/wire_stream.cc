#include "proxy/wire_stream.h"

#include "proxy/protocol/messages.h"

namespace pgrelay::proxy {

awaitable<bool> WireStream::Fill(size_t total) {
  while (buffer_.Unconsumed().size() < total) {
    buffer_.MakeRoom(total);
    const asio::mutable_buffer space(buffer_.WritePtr(), buffer_.WritableSize());
    auto [ec, n] = co_await transport_.ReadSome(space);
    if (ec) co_return false;
    buffer_.Commit(n);
  }
  co_return true;
}

awaitable<ReadStatus> WireStream::ReadStartup(std::string_view* body, uint32_t max_length) {
  ConsumeLast();
  if (!co_await Fill(4)) co_return ReadStatus::kClosed;
  uint32_t len = protocol::ReadBe32(buffer_.Unconsumed().data());
  if (len < 8 || len > max_length) co_return ReadStatus::kBadLength;
  if (!co_await Fill(len)) co_return ReadStatus::kClosed;
  *body = buffer_.Unconsumed().substr(4, len - 4);
  last_size_ = len;
  co_return ReadStatus::kOk;
}

awaitable<ReadStatus> WireStream::ReadMessage(char* type, std::string_view* body,
                                              uint32_t max_length) {
  ConsumeLast();
  if (!co_await Fill(5)) co_return ReadStatus::kClosed;
  std::string_view in = buffer_.Unconsumed();
  uint32_t len = protocol::ReadBe32(in.data() + 1);
  if (len < 4) co_return ReadStatus::kBadLength;
  if (len > max_length) co_return ReadStatus::kTooLarge;
  if (!co_await Fill(size_t{len} + 1)) co_return ReadStatus::kClosed;
  in = buffer_.Unconsumed();
  *type = in[0];
  *body = in.substr(5, len - 4);
  last_size_ = size_t{len} + 1;
  co_return ReadStatus::kOk;
}

awaitable<error_code> WireStream::Write(std::string_view bytes) {
  const asio::const_buffer data(bytes.data(), bytes.size());
  auto [ec, n] = co_await transport_.Write(data);
  co_return ec;
}

}  // namespace pgrelay::proxy
