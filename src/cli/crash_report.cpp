#include "cli/crash_report.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace sdtune::cli {
namespace {

// One address as "module+0xoffset (symbol+0xoffset)". Best effort: dladdr and fprintf are not
// async-signal-safe, but the process is going down anyway and this is its last word.
void print_address(const char* what, const void* address) {
  Dl_info info{};
  if (address != nullptr && dladdr(address, &info) != 0 && info.dli_fname != nullptr) {
    const auto offset =
        reinterpret_cast<uintptr_t>(address) - reinterpret_cast<uintptr_t>(info.dli_fbase);
    std::fprintf(stderr, "  %s %p = %s+0x%zx", what, address, info.dli_fname,
                 static_cast<size_t>(offset));
    if (info.dli_sname != nullptr)
      std::fprintf(stderr, " (%s+0x%zx)", info.dli_sname,
                   static_cast<size_t>(reinterpret_cast<uintptr_t>(address) -
                                       reinterpret_cast<uintptr_t>(info.dli_saddr)));
    std::fprintf(stderr, "\n");
  } else {
    std::fprintf(stderr, "  %s %p\n", what, address);
  }
}

void on_crash(int sig, siginfo_t* info, void* context) {
  std::fprintf(stderr, "sdtune: crashed with signal %d (%s), fault address %p\n", sig,
               strsignal(sig), info->si_addr);
#if defined(__x86_64__) && defined(__linux__)
  const auto* uc = static_cast<const ucontext_t*>(context);
  const auto pc = static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]);
  const auto sp = static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]);
  print_address("pc", reinterpret_cast<const void*>(pc));
  // A call through a null (or wild) function pointer leaves pc unusable for unwinding, but the
  // call pushed its return address: the caller is the word on top of the stack.
  print_address("return address on the stack", *reinterpret_cast<void* const*>(sp));
  // When the unwinder cannot start from pc, the words on the stack that name functions are the
  // next best thing: a rough call chain (stale words included).
  if (pc == 0) {
    const auto* words = reinterpret_cast<void* const*>(sp);
    for (int i = 1; i < 96; ++i) {
      Dl_info word{};
      if (dladdr(words[i], &word) != 0 && word.dli_sname != nullptr)
        print_address("stack word", words[i]);
    }
  }
#else
  (void)context;
#endif
  void* frames[48];
  const int n = backtrace(frames, 48);
  for (int i = 0; i < n; ++i) print_address("frame", frames[i]);
  std::fflush(stderr);
  // The default action (core dump, exit status 128 + sig) as if we had not been here.
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void install_crash_report() {
#if defined(__SANITIZE_ADDRESS__)
  return;  // AddressSanitizer's own report says more
#endif
  struct sigaction action {};
  action.sa_sigaction = on_crash;
  action.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE}) sigaction(sig, &action, nullptr);
}

}  // namespace sdtune::cli
