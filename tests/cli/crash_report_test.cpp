#include "cli/crash_report.h"

#include <gtest/gtest.h>
#include <signal.h>

namespace {

using CrashFn = void (*)();

// The pointer goes through a volatile global so that the compiler cannot see the null call.
volatile CrashFn g_null_function = nullptr;

[[gnu::noinline]] void call_through_null() {
  g_null_function();
}

TEST(CrashReportDeathTest, NamesTheSignalAndTheCaller) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer reports crashes itself";
#endif
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // A jump through a null function pointer: the report gives the return address on the stack,
  // which lies in this test binary.
  EXPECT_DEATH(
      {
        sdtune::cli::install_crash_report();
        call_through_null();
      },
      "crashed with signal 11 .*\n  pc (0x0|\\(nil\\))\n  return address on the stack 0x[0-9a-f]+ "
      "= "
      ".*sdtune_core_tests\\+0x");
  EXPECT_DEATH(
      {
        sdtune::cli::install_crash_report();
        raise(SIGBUS);
      },
      "crashed with signal 7 ");
}

}  // namespace
