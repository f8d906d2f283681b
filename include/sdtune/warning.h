#pragma once
// Warnings: something was skipped or redone, and the run goes on (a bad image, an unreadable cache
// entry). They go to stderr as "sdtune: warning: ..." unless the program routes them elsewhere:
// the CLI silences the ranks of a data-parallel run but rank 0, which see the same files and
// would repeat its warnings.
#include <functional>
#include <string>

namespace sdtune {

void warn(const std::string& message);

// Where warnings go from now on, for the whole process; an empty function silences them.
void set_warning_sink(std::function<void(const std::string&)> sink);

}  // namespace sdtune
