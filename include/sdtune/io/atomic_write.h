#pragma once
// Writing files and folders so that a crash at any instant leaves either the old content or the
// new one complete, never a half-written file under the real name: everything is written to a
// temporary sibling (same folder, so the rename stays on one file system and is atomic), flushed
// to the disk, then renamed into place. The one implementation of that for every file sdtune
// writes: weights, images, captions, pipeline folders and checkpoints.
#include <filesystem>
#include <functional>
#include <vector>

namespace sdtune::io {

// fsync of a file or folder: data must reach the disk before the rename that publishes it.
// An Error naming the path on failure.
void sync_path(const std::filesystem::path& path);

// sync_path of every file and folder under `root`, and of `root`.
void sync_tree(const std::filesystem::path& root);

enum class Existing {
  Replace,  // an existing file is replaced (by rename)
  Refuse,   // an existing file is an Error "refusing to overwrite an existing file", even when it
            // appears while we write (the file is linked into place, which never clobbers)
};

// Writes `path` atomically: `write` writes the temporary file PATH.tmp.PID it is given, which is
// then flushed to the disk and put in place. On any failure the temporary is removed and the
// Error (from `write`, or naming `path`) propagates; `path` is as it was.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(const std::filesystem::path& tmp)>& write,
                           Existing existing = Existing::Replace);

// Publishes the folder `dir` atomically: `fill` fills the empty temporary folder DIR.tmp-PID it
// is given; once complete it is flushed and renamed into place. An existing `dir` is moved aside
// to DIR.old-PID first (and put back if the new folder cannot take its place), then removed. On
// any failure the temporary folder is removed; the Error names the path at fault.
void publish_folder(const std::filesystem::path& dir,
                    const std::function<void(const std::filesystem::path& tmp)>& fill);

// Removes the folder `dir` so that a crash midway never leaves a part of it under its own name:
// it is renamed to DIR.old-PID (and that rename flushed) before anything inside is deleted.
void retire_folder(const std::filesystem::path& dir);

// Whether `name` is one of the temporaries above (NAME.tmp.PID, NAME.tmp-PID, NAME.old-PID):
// what a process killed while writing leaves behind.
bool is_temporary_name(const std::string& name);

// Removes every temporary under `root` (at any depth) and returns them. Only for a folder no
// other process writes to, such as a training run's output folder while its lock is held: a
// temporary found there belongs to a process that died.
std::vector<std::filesystem::path> remove_stale_temporaries(const std::filesystem::path& root);

}  // namespace sdtune::io
