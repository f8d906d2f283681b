#pragma once

namespace sdtune::cli {

// Installs handlers for SIGSEGV, SIGBUS, SIGILL and SIGFPE that print where the process died
// (the faulting instruction, the return address on top of the stack, and a backtrace, each as
// module+offset for addr2line) before the default action ends it. A native crash then says where
// it happened on a machine without a debugger.
void install_crash_report();

}  // namespace sdtune::cli
