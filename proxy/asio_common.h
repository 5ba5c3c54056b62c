// Asio aliases shared by the proxy's I/O code. Include only from proxy/*.cc and proxy headers
// that need sockets (keeps Asio out of protocol/, routing/, config/).
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace pgrelay::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
template <typename T = void>
using awaitable = asio::awaitable<T>;
// Completion token that returns error codes as values: EOF, reset, timeout and cancel are
// ordinary outcomes on the data path, not exceptions.
inline constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

}  // namespace pgrelay::proxy
