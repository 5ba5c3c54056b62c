// The TLS sides of pgrelay. Toward clients: an OpenSSL server context built from the tls: section
// (TLS 1.2 minimum, PostgreSQL's default cipher list), and the tls-server-end-point channel
// binding data of its certificate (SCRAM-SHA-256-PLUS). Built at start-up and on each reload;
// immutable afterwards, shared by every session that negotiates TLS while it is current.
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>

#include "config/config.h"

using X509 = struct x509_st;  // OpenSSL's certificate type, without its headers here

namespace pgrelay::proxy {

struct ServerTls {
  boost::asio::ssl::context context{boost::asio::ssl::context::tls_server};
  config::TlsMode mode = config::TlsMode::kDisable;
  // RFC 5929 tls-server-end-point: the certificate's hash with its signature's digest
  // (SHA-256 for MD5 / SHA-1 signatures).
  std::string end_point_hash;
};

// RFC 5929 tls-server-end-point data of `cert`: its hash with its signature's digest, SHA-256
// for MD5 / SHA-1 signatures; empty if it cannot be computed (or cert is null).
std::string TlsServerEndPointHash(X509* cert);

// nullptr with *error set (no secret in it) if the files cannot be used; nullptr without an
// error when tls.mode is disable.
std::shared_ptr<const ServerTls> MakeServerTls(const config::TlsConfig& tls, std::string* error);

// The TLS side of pgrelay toward the nodes (backend.tls): an OpenSSL client context with the CA
// to verify against (verify-ca, verify-full) and the optional client certificate. Built at
// start-up and on each reload; immutable afterwards.
struct BackendTls {
  boost::asio::ssl::context context{boost::asio::ssl::context::tls_client};
  config::BackendTlsMode mode = config::BackendTlsMode::kPrefer;
  // The settings that made it (mode and file names): connections made under other settings
  // are not pooled together (BackendPool keys). A reload that changes nothing keeps it.
  std::string identity;
};

// nullptr with *error set if the files cannot be used; nullptr without an error for disable.
std::shared_ptr<const BackendTls> MakeBackendTls(const config::BackendTlsConfig& tls,
                                                 std::string* error);

}  // namespace pgrelay::proxy
