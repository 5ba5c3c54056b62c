// LD_PRELOAD library for test_alloc.py: counts the heap allocations made on pgrelay's worker
// threads (named "pgrelay-w<N>"), so a test can show that relaying messages allocates nothing once
// a session is warm. Built by the test with `g++ -shared -fPIC`; not part of pgrelay.
//
// Every allocation entry point of glibc is replaced and forwarded to glibc's own (__libc_*).
// Counts go to a shared page: PGRELAY_ALLOC_COUNT_FILE names a file of at least 4096 bytes,
// mapped MAP_SHARED, so the test reads them while pgrelay runs:
//   word 0: allocations on worker threads (malloc, calloc, realloc, memalign, aligned_alloc, ...)
//   word 1: set by the test to 1 to print a backtrace of each counted allocation to stderr
//           (finding where one comes from)
#include <execinfo.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

extern "C" {
void* __libc_malloc(size_t size);
void* __libc_calloc(size_t count, size_t size);
void* __libc_realloc(void* ptr, size_t size);
void* __libc_memalign(size_t alignment, size_t size);
void __libc_free(void* ptr);
}

namespace {

std::atomic<uint64_t>* g_page = nullptr;
std::atomic<int> g_state{0};  // 0 not mapped yet, 1 mapping, 2 mapped (or no file)

// 0: not known yet (the thread still has the process's name), 1: a worker, 2: another thread.
__attribute__((tls_model("initial-exec"))) thread_local int t_kind = 0;
__attribute__((tls_model("initial-exec"))) thread_local bool t_tracing = false;

std::atomic<uint64_t>* Page() {
  int state = g_state.load(std::memory_order_acquire);
  if (state == 2) return g_page;
  int expected = 0;
  if (!g_state.compare_exchange_strong(expected, 1)) return nullptr;  // being mapped: skip
  const char* path = getenv("PGRELAY_ALLOC_COUNT_FILE");
  if (path != nullptr) {
    int fd = open(path, O_RDWR);
    if (fd >= 0) {
      void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
      if (p != MAP_FAILED) g_page = static_cast<std::atomic<uint64_t>*>(p);
    }
  }
  g_state.store(2, std::memory_order_release);
  return g_page;
}

void Count(size_t size) {
  if (t_kind == 2 || t_tracing) return;
  if (t_kind == 0) {
    char name[17] = {};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    if (strncmp(name, "pgrelay-w", 9) == 0) {
      t_kind = 1;
    } else if (strcmp(name, "pgrelay") != 0) {
      t_kind = 2;
      return;
    } else {
      return;  // not named yet
    }
  }
  std::atomic<uint64_t>* page = Page();
  if (page == nullptr) return;
  page[0].fetch_add(1, std::memory_order_relaxed);
  if (page[1].load(std::memory_order_relaxed) != 0) {
    t_tracing = true;  // backtrace() may allocate the first time
    void* frames[32];
    int n = backtrace(frames, 32);
    char header[64];
    int len = snprintf(header, sizeof header, "--- pgrelay worker allocation of %zu bytes\n", size);
    (void)!write(2, header, static_cast<size_t>(len));
    backtrace_symbols_fd(frames, n, 2);
    t_tracing = false;
  }
}

}  // namespace

extern "C" {

void* malloc(size_t size) {
  Count(size);
  return __libc_malloc(size);
}

void* calloc(size_t count, size_t size) {
  Count(count * size);
  return __libc_calloc(count, size);
}

void* realloc(void* ptr, size_t size) {
  Count(size);
  return __libc_realloc(ptr, size);
}

void free(void* ptr) { __libc_free(ptr); }

void* memalign(size_t alignment, size_t size) {
  Count(size);
  return __libc_memalign(alignment, size);
}

void* aligned_alloc(size_t alignment, size_t size) {
  Count(size);
  return __libc_memalign(alignment, size);
}

int posix_memalign(void** out, size_t alignment, size_t size) {
  Count(size);
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}

}  // extern "C"
