#include "proxy/worker_context.h"

namespace pgrelay::proxy {

namespace {

routing::FunctionLists ListsOf(const config::RoutingConfig& routing) {
  return routing::FunctionLists{routing.side_effect_free_functions, routing.primary_functions};
}

}  // namespace

WorkerContext::WorkerContext(std::shared_ptr<const config::Config> c)
    : config(std::move(c)),
      classifier(routing::FunctionCatalog::Builtin(ListsOf(config->routing)),
                 routing::ClassifierOptions::FromConfig(config->routing)),
      router(*config),
      in_flight(config::kMaxNodes, 0) {}

void WorkerContext::Reconfigure(std::shared_ptr<const config::Config> next) {
  if (!(next->routing == config->routing)) {
    classifier.SetOptions(routing::ClassifierOptions::FromConfig(next->routing));
  }
  router.Reconfigure(*next);
  config = std::move(next);  // after the router took the new one: the old one may go now
}

}  // namespace pgrelay::proxy
