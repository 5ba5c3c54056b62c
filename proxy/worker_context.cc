#include "proxy/worker_context.h"

namespace pgrelay::proxy {

namespace {

routing::FunctionLists ListsOf(const config::RoutingConfig& routing) {
  return routing::FunctionLists{routing.side_effect_free_functions, routing.primary_functions};
}

}  // namespace

WorkerContext::WorkerContext(const config::Config& config)
    : classifier(routing::FunctionCatalog::Builtin(ListsOf(config.routing)),
                 routing::ClassifierOptions::FromConfig(config.routing)),
      router(config),
      in_flight(config.nodes.size(), 0) {}

}  // namespace pgrelay::proxy
