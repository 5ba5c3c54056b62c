// One client connection: start-up, authentication, then routing each unit of work (a simple
// Query, or an extended-protocol batch up to Sync) to a backend connection it owns (at most one
// per node, opened when needed or taken from the worker's BackendPool) and relaying the replies
// back in order.
// Lives in coroutines on one worker; not thread-safe.
//
// Ordering: units go to one backend at a time, the session's `current_` backend. The session
// moves to another backend only once every reply owed by the current one has reached the
// client, so replies never reorder, even for pipelining clients. Each backend has one reader
// coroutine that relays its replies (streaming, without copying) and counts ReadyForQuery.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proxy/asio_common.h"
#include "proxy/backend_connection.h"
#include "proxy/buffer_pool.h"
#include "proxy/ring.h"
#include "proxy/server_context.h"
#include "proxy/session_state.h"
#include "proxy/signal.h"
#include "proxy/transport.h"
#include "proxy/wire_stream.h"
#include "proxy/worker_context.h"
#include "routing/router.h"

namespace pgrelay::proxy {

class ClientSession {
 public:
  ClientSession(tcp::socket socket, ServerContext& context, WorkerContext& worker);
  ~ClientSession();

  awaitable<void> Run();
  // Ends the session from outside (process shutdown): closes its sockets, so Run() returns.
  void Shutdown() { CloseAll(); }
  // Closes the session's connection to node `node` (declared down or fenced): a statement
  // waiting there gets an error; the session goes on elsewhere when it can.
  void DropNode(int node, const char* why);

 private:
  // The replies to one unit (or one pgrelay-internal request), up to its ReadyForQuery.
  struct Group {
    bool forward = true;  // false: pgrelay's own request (state replay), swallowed
    bool commit = false;  // the unit commits a transaction
    bool write = false;   // the unit writes (routed to the primary)
    bool error = false;   // an ErrorResponse was among the replies
    char status_before = 'I';
    char status_after = 'I';
    std::chrono::steady_clock::time_point sent;  // for the statement latency histogram
  };
  // One server connection of this session.
  struct Backend {
    int node = -1;
    std::unique_ptr<BackendConnection> conn;
    Ring<Group> pending;  // oldest first
    uint32_t forward_pending = 0;
    uint64_t state_version = 0;                          // session settings applied here
    std::unordered_map<std::string, uint64_t> prepared;  // statement name -> definition id
    bool alive = true;
    bool reader_running = false;
    std::string rewritten;          // a FATAL relayed as ERROR (see RewriteFatal)
    const char* dropped = nullptr;  // why pgrelay closed it (CloseBackend), for the log and client
    bool counted = false;           // in pgrelay_backend_connections
    char status = 'I';              // transaction status of its last ReadyForQuery
    // pool.mode session: the key it is pooled under (empty: pooling off); at session end,
    // DISCARD ALL sent (`resetting`), and its reply came back clean (`reset_ok`).
    std::string pool_key;
    bool resetting = false;
    bool reset_ok = false;
    bool loaded = false;  // a LOAD ran here: DISCARD ALL cannot undo it, so it is not pooled
  };
  // Extended-protocol messages since the last Sync, held until the batch can be routed whole.
  struct Batch {
    std::string bytes;
    routing::UnitTraits traits;
    std::vector<std::string> statements;  // named statements it uses (to re-prepare)
    std::vector<std::string> defined;     // named statements it parses
    std::vector<std::string> closed;      // named statements it closes
    std::vector<std::string> stale;       // names (re)defined here that no longer exist for the
                                          // session: drop leftovers on the target first
    // Statements with session effects that this batch executes (SET, DISCARD ALL, ...).
    std::vector<std::pair<std::string, routing::Classification>> effects;
    std::optional<std::pair<std::string, routing::Classification>> unnamed_effect;
    bool has_statement = false;  // a Parse, Bind or statement Describe: something to route by
    bool has_execute = false;
    bool has_parse_unnamed = false;
    bool uses_unnamed_without_parse = false;
    bool group_pushed = false;
    bool failed = false;
    Backend* sticky = nullptr;  // after a Flush: the rest of the batch follows
    bool empty() const { return bytes.empty(); }
    void Clear() {
      bytes.clear();
      traits = {};
      statements.clear();
      defined.clear();
      closed.clear();
      stale.clear();
      effects.clear();
      unnamed_effect.reset();
      has_statement = has_execute = has_parse_unnamed = uses_unnamed_without_parse = group_pushed =
          failed = false;
      sticky = nullptr;
    }
  };

  // Start-up (client_session.cc).
  awaitable<bool> Startup();
  awaitable<bool> StartupSteps();
  awaitable<bool> Authenticate();
  awaitable<bool> AuthenticateScram(const AuthDirectory::User* user);
  awaitable<bool> AuthenticateMd5(const AuthDirectory::User* user);
  awaitable<bool> ConnectFirstBackend();
  awaitable<void> HandleCancel(int32_t pid, int32_t key);
  awaitable<void> SendFatal(std::string_view code, std::string_view message,
                            std::string_view hint = {});
  BackendLoginParams LoginParamsFor(const health::NodeStatus& node) const;
  // "no primary node is available (pg1: <why>; ...)": tells the client what the probes saw.
  static std::string NoPrimaryMessage(const health::Topology& topology);
  // Closes the client, backend logins under way and every backend connection (but those
  // being reset for the pool, with `keep_resetting`).
  void CloseAll(bool keep_resetting = false);
  // pool.mode session: a connection to `node` parked by an earlier session, for `b` (which gets
  // the pool key); nullptr if none (then log in; `b` parks under that key at the end).
  std::unique_ptr<BackendConnection> FromPool(const BackendLoginParams& params,
                                              const health::NodeStatus& node, Backend* b);
  // At session end: whether `b` may go to the pool (idle, nothing owed, node healthy).
  bool Reusable(const Backend& b, const health::Topology& topology) const;
  // At session end: resets the reusable connections with DISCARD ALL and parks them, says
  // goodbye to the others, closes everything and waits for every reader.
  awaitable<void> EndBackends();
  // Metrics: a refused start-up by its SQLSTATE (once per session); a backend connection
  // opened (true) or gone (false), counted once each way.
  void CountRejected(std::string_view code);
  void CountBackend(Backend* b, bool open);

  // The relay (session_relay.cc).
  awaitable<void> Relay();
  awaitable<bool> ClientPump();
  awaitable<bool> OnClientMessage(char type, std::string_view msg);
  // The data path without waiting: relays `msg` when nothing has to wait (an extended-protocol
  // message held for its batch; a Query or Sync whose backend is open and free; the bytes go to
  // the outbox, which ClientPump writes once the client's input is consumed). False: nothing
  // was done, OnClientMessage handles it. No coroutine frame, so no allocation.
  bool RelayNow(char type, std::string_view msg);
  struct Query {
    std::string_view sql;
    routing::Classification c;
    routing::UnitTraits traits;
  };
  // A simple Query's statement: classified, its traits, the prepared statements it uses (in
  // unit_statements_ / unit_stale_).
  Query PrepareQuery(std::string_view msg);
  // The query to `b` (current_): state replay first, then the query; its reply group.
  void SendQuery(Backend* b, std::string_view msg, const Query& q);
  // Parse, Bind, Describe, Close, Execute into the batch; CopyDone/CopyFail into the outbox.
  void BufferMessage(char type, std::string_view msg);
  void NoteStatementUse(std::string_view name, bool executes);
  // Classifies with the worker's classifier and publishes its cache counters.
  routing::Classification Classify(std::string_view sql);
  awaitable<void> SendBatch(bool final, bool forced);
  // Where the batch must go regardless of routing (the unnamed statement's backend; the current
  // one for a batch with nothing to route by); nullptr: route it.
  Backend* BatchHome();
  // The batch to `b` (current_, state replayed): into the outbox, with its reply group.
  void SendBatchTo(Backend* b, bool final);
  awaitable<Backend*> Choose(const routing::UnitTraits& traits, bool respond_ready = true);
  // Choose when the answer needs no waiting (an open backend, no pause, no consistency wait);
  // nullptr: Choose must decide. A load-balancing decision it made is kept in routed_ for
  // Choose (asking the balancer twice for one unit would skip a node).
  Backend* ChooseNow(const routing::UnitTraits& traits);
  // The fast path used routed_: counts a fallback to the primary, forgets it.
  void TakeRoute();
  // A pipelining client's current backend if it is as good a target for this unit.
  Backend* KeepPipelining(const routing::UnitTraits& traits, const routing::SessionRouting& session,
                          const health::Topology& topology);
  // A connection to `node` (a new one unless another login to it, the warm-up's, was under way
  // and succeeded); nullptr if the login failed or the session is ending.
  awaitable<Backend*> OpenBackend(int node);
  bool LoginUnderWay(int node) const;
  // routing.lazy_connect false: right after login, opens in the background the replica
  // connections the session's reads will use (Relay waits for it like for a reader).
  void StartWarmUp();
  awaitable<void> WarmUp();
  awaitable<void> WarmUpReplicas();
  // Admin PAUSE: holds the next unit at a transaction boundary until RESUME (or the pause's end).
  awaitable<void> WaitWhilePaused();
  awaitable<Backend*> HoldForPrimary(const routing::UnitTraits& traits,
                                     const routing::SessionRouting& session,
                                     std::shared_ptr<const health::Topology>* topology);
  void StartReader(Backend* b);
  awaitable<bool> SwitchTo(Backend* b);
  // SwitchTo without waiting: true when current_ is `b` (nothing was owed by the previous one).
  bool SwitchNow(Backend* b);
  void UpdateCancelTarget();
  static CancelTarget CancelTargetOf(const BackendConnection& c) {
    return CancelTarget{c.host(), c.port(), c.pid(), c.key()};
  }
  // Brings `b` to the session's settings, prepares the named statements a unit uses, and drops
  // leftovers of names the session closed (`statements` and `stale`).
  void AppendReplay(Backend* b, const std::vector<std::string>* statements,
                    const std::vector<std::string>* stale = nullptr);
  void PushForward(Backend* b, const routing::UnitTraits& traits, bool statement);
  void PushSwallowed(Backend* b);
  awaitable<bool> Flush();
  // A write to `b` failed: close it so that its reader, which may wait without trying the
  // socket, ends and answers the client.
  void BackendWriteFailed(Backend* b, const error_code& ec);
  // Closes `b`'s socket, recording `why` for the reader that answers the client (OnBackendLost).
  void CloseBackend(Backend* b, const char* why);
  // Replies `backend` (a Backend) still owes: its relay reads ask (proxy/relay_read.h).
  static size_t RepliesOwed(const void* backend);
  // Writes the outbox as far as the socket takes it at once; true when nothing is left.
  bool FlushNow();
  // Until the current backend owes the client no reply (replies stay in order).
  awaitable<void> WaitCurrentDone();
  awaitable<bool> WriteToClient(const std::vector<asio::const_buffer>& buffers);
  // Writes to the client at once if no other write is under way. True when done (or the client
  // is gone: *failed, the session ends); false: WriteToClient must send `buffers`, from which
  // what was written has been removed.
  bool WriteToClientNow(std::vector<asio::const_buffer>& buffers, bool* failed);
  awaitable<void> RespondError(std::string_view code, std::string_view message, bool with_ready);
  awaitable<void> RespondReady();
  awaitable<void> BackendReader(Backend* b);
  awaitable<void> ReadBackend(Backend* b);
  void OnGroupDone(Backend* b);
  void OnBackendLost(Backend* b, std::string_view why);
  bool RewriteFatal(Backend* b, std::string_view message);
  awaitable<void> AnswerLost(Backend* b);
  // Session-state bookkeeping for a statement string just sent to `b` (session_effects.cc).
  void NoteStatementEffects(std::string_view sql, const routing::Classification& c, Backend* b);
  // Prepared statement names a statement string uses (EXECUTE, DEALLOCATE) and names it defines
  // that the session does not have any more (PREPARE after DEALLOCATE).
  void StatementsUsed(const routing::Classification& c, std::vector<std::string>* used,
                      std::vector<std::string>* stale) const;
  static bool HasEffects(const routing::Classification& c);
  void DropOtherBackends(Backend* keep);

  // Consistency strategies: read-your-writes and quorum (session_consistency.cc).
  bool Consistent() const {
    return strategy_ == config::Strategy::kReadYourWrites || strategy_ == config::Strategy::kQuorum;
  }
  // Routes a read that may go to a replica under read-your-writes / quorum: only to a replica
  // that has replayed what the read must see, waiting up to max_wait for one, else the primary.
  awaitable<routing::RouteResult> RouteConsistent(
      const routing::UnitTraits& traits, const routing::SessionRouting& session,
      std::shared_ptr<const health::Topology>* topology);
  // Quorum's read index: the primary's WAL LSN read after `arrived`; 0 if it cannot be had.
  awaitable<uint64_t> ReadIndex(std::chrono::steady_clock::time_point arrived);
  // Quorum without a read index (the primary is unreachable): under quorum commit, the most
  // advanced of a read quorum of synchronous standbys; else the primary if one is known; else
  // an error.
  awaitable<routing::RouteResult> QuorumWithoutPrimary(
      const routing::UnitTraits& traits, const routing::SessionRouting& session,
      std::shared_ptr<const health::Topology>* topology,
      std::chrono::steady_clock::time_point arrived);
  awaitable<void> WaitLsn(std::chrono::steady_clock::time_point deadline);
  void WakeLsn();
  // A write of this session committed (ReadyForQuery back to idle after a write).
  void NoteCommit();
  void RequestCommitLsn();
  void OnCommitLsn(std::chrono::steady_clock::time_point since, uint64_t lsn);
  // Takes the commit's LSN from the tracker if a probe sent after the commit has returned.
  void ResolveCommit();
  void QueueCausalStatus();
  void FillReplayView(const health::Topology& topology);
  // SHOW / SET / RESET of pgrelay.* (pgrelay_settings.h); true if `sql` was one and answered.
  awaitable<bool> HandlePgrelayCommand(std::string_view sql, const routing::Classification& c);
  // Applies a pgrelay.* setting; an error message if the value is not valid.
  std::string SetPgrelaySetting(std::string_view name, std::string_view value);
  // Answers a locally handled statement: `messages` then ReadyForQuery, in order with the
  // replies still owed by backends.
  awaitable<void> RespondLocal(std::string_view messages);
  // Inside a transaction on a live backend (while replies are outstanding, the predicted state
  // counts: the client may pipeline BEGIN and more): everything stays on current_.
  bool InTransaction() const;
  // Between transactions: takes the worker's newer config (after a reload), with the strategy
  // it gives this session.
  void AdoptConfig();
  // A wrong password (or unknown user): log, wait the AuthThrottle delay, send 28P01.
  awaitable<void> FailPassword(bool known_user);

  ServerContext& ctx_;
  // The config this session runs with: the worker's newest at start, adopted again at each
  // transaction boundary (AdoptConfig) after a reload.
  std::shared_ptr<const config::Config> config_;
  std::shared_ptr<const AuthDirectory> auth_;  // the users as of the session's login
  WorkerContext& worker_;
  Transport client_;  // plain TCP, or TLS after an SSLRequest
  IoBuffer client_buf_;
  WireStream client_stream_;
  std::string peer_;
  std::string peer_address_;  // the client's IP address, without the port (AuthThrottle)
  std::string user_;
  std::string database_;
  std::vector<std::pair<std::string, std::string>> forwarded_params_;
  const AuthDirectory::User* auth_user_ = nullptr;  // in *auth_
  std::string application_name_;                    // at connect time (routing.overrides)
  bool counted_ = false;
  bool started_ = false;  // start-up done: the relay runs
  bool rejected_counted_ = false;
  int32_t pid_ = 0;
  int32_t key_ = 0;
  std::shared_ptr<CancelSlot> cancel_slot_;  // where a CancelRequest for pid_ goes

  std::vector<std::unique_ptr<Backend>> backends_;  // indexed by node slot (config::kMaxNodes)
  Backend* current_ = nullptr;       // where the last unit went; the transaction's backend
  Backend* unnamed_home_ = nullptr;  // where the unnamed prepared statement was parsed
  SessionState state_;
  Batch batch_;
  std::optional<routing::RouteResult> routed_;  // see ChooseNow
  int preferred_replica_ = -1;  // routing.replica_affinity session: where the reads went last
  routing::SessionRouting Routing() const {
    return {strategy_, state_.pinned(), state_.default_read_only(), preferred_replica_};
  }
  void NoteRoute(const routing::RouteResult& r) {
    if (r.node >= 0 && !r.to_primary) preferred_replica_ = r.node;
  }
  std::vector<std::string> unit_statements_;
  std::vector<std::string> unit_stale_;
  static constexpr size_t kMessageRoom = 1024;             // reserved in outbox_ and batch_.bytes
  std::string outbox_;                                     // bytes for current_, written by Flush()
  config::Strategy strategy_ = config::Strategy::kLeader;  // routing.strategy or an override
  char tx_status_ = 'I';
  bool tx_predicted_ = false;  // in a transaction once the sent units have run
  bool ending_ = false;
  int readers_ = 0;       // backend readers and the warm-up: the session outlives them
  Signal switch_signal_;  // a backend's forwarded replies all reached the client
  Signal readers_done_;
  struct Login {
    int node;
    BackendConnection* conn;
  };
  std::vector<Login> logins_;  // backend logins under way (CloseAll ends them)
  Signal logins_done_;
  Signal client_write_free_;
  bool client_writing_ = false;
  std::string last_connect_error_;
  std::string lost_in_transaction_;
  std::string reply_;
  std::string reply_lost_;
  std::string scratch_;

  // Consistency state (session_consistency.cc).
  uint64_t causal_lsn_ = 0;         // covers the session's acknowledged writes
  uint64_t min_lsn_ = 0;            // pgrelay.min_lsn: a causal token from another session
  uint32_t writes_in_flight_ = 0;   // write units sent whose ReadyForQuery has not come back
  bool wrote_ = false;              // a write ran since the session was last idle
  bool commit_unresolved_ = false;  // a write committed; no LSN probe after it returned yet
  bool commit_probe_outstanding_ = false;
  std::chrono::steady_clock::time_point commit_time_{};
  std::shared_ptr<ClientSession*> self_;  // callbacks from other threads hold a weak_ptr
  asio::steady_timer lsn_timer_;
  bool lsn_waiting_ = false;
  std::string status_pending_;  // ParameterStatus pgrelay.causal_lsn for the next boundary
  std::string status_sending_;  // ... being written to the client
  std::vector<uint64_t> replay_view_;
};

}  // namespace pgrelay::proxy
