#include "proxy/server_tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>

namespace pgrelay::proxy {

namespace {

// PostgreSQL's default ssl_ciphers (TLS 1.2 and below; TLS 1.3 suites are OpenSSL's defaults).
constexpr const char* kCiphers = "HIGH:MEDIUM:+3DES:!aNULL";

std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof buf);
  return buf;
}

}  // namespace

std::string TlsServerEndPointHash(X509* cert) {
  if (cert == nullptr) return {};
  int md_nid = NID_undef;
  if (!OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, nullptr)) return {};
  if (md_nid == NID_md5 || md_nid == NID_sha1 || md_nid == NID_undef) md_nid = NID_sha256;
  const EVP_MD* md = EVP_get_digestbynid(md_nid);
  if (md == nullptr) return {};
  unsigned char hash[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!X509_digest(cert, md, hash, &len)) return {};
  return std::string(reinterpret_cast<const char*>(hash), len);
}

std::shared_ptr<const ServerTls> MakeServerTls(const config::TlsConfig& tls, std::string* error) {
  if (tls.mode == config::TlsMode::kDisable) return nullptr;
  auto out = std::make_shared<ServerTls>();
  out->mode = tls.mode;
  SSL_CTX* ctx = out->context.native_handle();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (SSL_CTX_set_cipher_list(ctx, kCiphers) != 1) {
    *error = "tls: cannot set the cipher list: " + OpenSslError();
    return nullptr;
  }
  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1) {
    *error =
        "tls.cert_file " + tls.cert_file + ": cannot load the certificate chain: " + OpenSslError();
    return nullptr;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    *error = "tls.key_file " + tls.key_file + ": cannot load the private key: " + OpenSslError();
    return nullptr;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    *error = "tls.key_file " + tls.key_file + " does not match tls.cert_file " + tls.cert_file;
    ERR_clear_error();
    return nullptr;
  }
  X509* cert = SSL_CTX_get0_certificate(ctx);
  out->end_point_hash = TlsServerEndPointHash(cert);
  if (out->end_point_hash.empty()) {
    *error = "tls.cert_file " + tls.cert_file +
             ": cannot compute the certificate hash for channel binding";
    return nullptr;
  }
  return out;
}

std::shared_ptr<const BackendTls> MakeBackendTls(const config::BackendTlsConfig& tls,
                                                 std::string* error) {
  if (tls.mode == config::BackendTlsMode::kDisable) return nullptr;
  auto out = std::make_shared<BackendTls>();
  out->mode = tls.mode;
  for (std::string_view part : {config::ToString(tls.mode), std::string_view(tls.ca_file),
                                std::string_view(tls.cert_file), std::string_view(tls.key_file)}) {
    out->identity.append(part).push_back('\0');
  }
  SSL_CTX* ctx = out->context.native_handle();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  ERR_clear_error();
  if (!tls.ca_file.empty() &&
      SSL_CTX_load_verify_locations(ctx, tls.ca_file.c_str(), nullptr) != 1) {
    *error = "backend.ca_file " + tls.ca_file + ": cannot load: " + OpenSslError();
    return nullptr;
  }
  if (!tls.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1) {
      *error = "backend.cert_file " + tls.cert_file + ": cannot load: " + OpenSslError();
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      *error = "backend.key_file " + tls.key_file +
               ": cannot load or does not match cert_file: " + OpenSslError();
      return nullptr;
    }
  }
  const bool verify = tls.mode == config::BackendTlsMode::kVerifyCa ||
                      tls.mode == config::BackendTlsMode::kVerifyFull;
  SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  return out;
}

}  // namespace pgrelay::proxy
