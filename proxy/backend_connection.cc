#include "proxy/backend_connection.h"

#include <algorithm>
#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <memory>
#include <optional>

#include "proxy/protocol/md5_auth.h"
#include "proxy/protocol/messages.h"
#include "proxy/protocol/scram.h"
#include "proxy/watchdog.h"
#include "proxy/wire_stream.h"

namespace pgrelay::proxy {

namespace {
constexpr uint32_t kMaxLoginMessage = 1 << 20;
}  // namespace

BackendConnection::BackendConnection(const asio::any_io_executor& executor, BufferPool* pool)
    : transport_(tcp::socket(executor)), buffer_(pool) {}

awaitable<bool> BackendConnection::Login(const BackendLoginParams& params) {
  node_name_ = params.node_name;
  host_ = params.host;
  port_ = params.port;
  Watchdog watchdog(transport_.get_executor());
  watchdog.Arm(params.timeout, [this] {
    error_code ignored;
    transport_.socket().close(ignored);
  });
  bool ok = co_await LoginSteps(params);
  watchdog.Disarm();
  if (watchdog.fired()) {
    server_error_.clear();
    error_message_ = "timed out after " + std::to_string(params.timeout.count()) +
                     " ms connecting to node " + node_name_;
    ok = false;
  }
  co_return ok;
}

void BackendConnection::NoteParameterStatus(std::string_view message) {
  constexpr size_t kHeader = 5;  // type byte and length
  // The parameter name of a ParameterStatus message; empty for any other message.
  auto name_of = [](std::string_view m) {
    if (m.size() <= kHeader || m[0] != 'S') return std::string_view();
    return m.substr(kHeader, m.find('\0', kHeader) - kHeader);
  };
  const std::string_view name = name_of(message);
  if (name.empty()) return;
  std::string updated;
  bool replaced = false;
  for (std::string_view rest = startup_messages_; rest.size() >= kHeader;) {
    const size_t size = std::min<size_t>(rest.size(), size_t{protocol::ReadBe32(&rest[1])} + 1);
    const std::string_view one = rest.substr(0, size);
    rest.remove_prefix(size);
    const bool same = name_of(one) == name;
    updated.append(same ? message : one);
    replaced |= same;
  }
  if (!replaced) updated.append(message);
  startup_messages_ = std::move(updated);
}

awaitable<bool> BackendConnection::StartTls(const BackendLoginParams& p, const std::string& where) {
  const std::string mode(config::ToString(p.tls->mode));
  std::string request;
  protocol::MessageWriter(&request).Begin(0).Int32(protocol::kSslRequestCode).End();
  auto [wec, written] =
      co_await asio::async_write(transport_.socket(), asio::buffer(request), kNoThrow);
  if (wec) co_return Fail("could not send SSLRequest to " + where + ": " + wec.message());
  // Exactly one byte: after 'N' the node waits for the start-up packet in plain text.
  char answer = 0;
  auto [rec, n] =
      co_await asio::async_read(transport_.socket(), asio::buffer(&answer, 1), kNoThrow);
  if (rec) co_return Fail("connection to " + where + " closed after SSLRequest");
  if (answer == 'N') {
    if (p.tls->mode == config::BackendTlsMode::kPrefer) co_return true;  // plain text, as libpq
    co_return Fail(where + " does not accept TLS (it answered N to SSLRequest; backend.tls is " +
                   mode + "): set ssl = on on the node, or lower backend.tls");
  }
  if (answer != 'S') co_return Fail("unexpected answer to SSLRequest from " + where);
  std::string detail;
  const error_code ec = co_await transport_.ClientHandshake(p.tls, p.host, &detail);
  if (ec) {
    co_return Fail("TLS handshake with " + where + " failed (backend.tls " + mode +
                   "): " + (detail.empty() ? ec.message() : detail));
  }
  co_return true;
}

awaitable<bool> BackendConnection::LoginSteps(const BackendLoginParams& p) {
  const std::string where =
      "node " + p.node_name + " (" + p.host + ":" + std::to_string(p.port) + ")";
  tcp::resolver resolver(transport_.get_executor());
  const std::string port = std::to_string(p.port);
  auto [rec, endpoints] = co_await resolver.async_resolve(p.host, port, kNoThrow);
  if (rec) co_return Fail("could not resolve " + where + ": " + rec.message());
  auto [cec, ep] = co_await asio::async_connect(transport_.socket(), endpoints, kNoThrow);
  if (cec) co_return Fail("could not connect to " + where + ": " + cec.message());
  transport_.socket().set_option(tcp::no_delay(true));
  if (p.tls != nullptr && !co_await StartTls(p, where)) co_return false;

  std::string out;
  protocol::MessageWriter w(&out);
  w.Begin(0).Int32(protocol::kProtocolV3);
  w.CString("user").CString(p.user).CString("database").CString(p.database);
  for (const auto& [k, v] : p.options) w.CString(k).CString(v);
  w.Byte('\0').End();

  WireStream stream(transport_, buffer_);
  if (co_await stream.Write(out)) co_return Fail("could not send start-up to " + where);
  std::optional<protocol::ScramClient> scram;
  for (;;) {
    char type = 0;
    std::string_view body;
    auto st = co_await stream.ReadMessage(&type, &body, kMaxLoginMessage);
    if (st != ReadStatus::kOk) co_return Fail("connection to " + where + " closed during login");
    out.clear();
    protocol::MessageReader r(body);
    switch (type) {
      case 'R': {
        int32_t code = r.Int32();
        switch (code) {
          case protocol::kAuthOk:
            break;
          case protocol::kAuthCleartext:
            protocol::MessageWriter(&out).Begin('p').CString(p.password).End();
            break;
          case protocol::kAuthMd5: {
            std::string_view salt = r.Bytes(4);
            if (!r.ok()) co_return Fail("malformed md5 request from " + where);
            protocol::MessageWriter(&out)
                .Begin('p')
                .CString(protocol::Md5Response(p.user, p.password, salt))
                .End();
            break;
          }
          case protocol::kAuthSasl: {
            bool has_scram = false, has_plus = false;
            for (std::string_view m = r.CString(); r.ok() && !m.empty(); m = r.CString()) {
              if (m == protocol::kScramMechanism) has_scram = true;
              if (m == protocol::kScramPlusMechanism) has_plus = true;
            }
            if (!has_scram && !has_plus) {
              co_return Fail(where + " offers no supported SASL mechanism");
            }
            scram.emplace(p.password);
            // Over TLS, bind the login to the node's certificate when the node offers it.
            if (transport_.tls()) scram->SetChannelBinding(has_plus, transport_.PeerEndPointHash());
            std::string first = scram->ClientFirst();
            protocol::MessageWriter(&out)
                .Begin('p')
                .CString(scram->mechanism())
                .Int32(static_cast<int32_t>(first.size()))
                .Bytes(first)
                .End();
            break;
          }
          case protocol::kAuthSaslContinue: {
            std::string final_msg;
            if (!scram ||
                scram->HandleServerFirst(r.Rest(), &final_msg) != protocol::ScramStatus::kOk)
              co_return Fail("invalid SCRAM exchange with " + where);
            protocol::MessageWriter(&out).Begin('p').Bytes(final_msg).End();
            break;
          }
          case protocol::kAuthSaslFinal:
            if (!scram || scram->VerifyServerFinal(r.Rest()) != protocol::ScramStatus::kOk)
              co_return Fail(where + " failed SCRAM server verification");
            break;
          default:
            co_return Fail(where + " asks for an authentication method pgrelay does not support (" +
                           std::to_string(code) + ")");
        }
        if (!out.empty() && co_await stream.Write(out))
          co_return Fail("connection to " + where + " lost during authentication");
        break;
      }
      case 'S':
      case 'N':
        startup_messages_.push_back(type);
        startup_messages_.append(body.data() - 4, body.size() + 4);
        break;
      case 'K':
        pid_ = r.Int32();
        key_ = r.Int32();
        break;
      case 'v':
        break;  // NegotiateProtocolVersion: we asked for 3.0 only, nothing to do
      case 'E':
        server_error_.push_back(type);
        server_error_.append(body.data() - 4, body.size() + 4);
        error_message_ = where + ": " + protocol::ParseErrorFields(body).message;
        co_return false;
      case 'Z':
        stream.ConsumeLast();
        co_return true;
      default:
        co_return Fail("unexpected message '" + std::string(1, type) + "' from " + where +
                       " during login");
    }
  }
}

}  // namespace pgrelay::proxy
