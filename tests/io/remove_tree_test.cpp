#include "sdtune/io/remove_tree.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "sdtune/error.h"

namespace fs = std::filesystem;
using sdtune::io::remove_tree;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()));
  std::error_code ec;  // a previous run that died may have left it
  remove_tree(dir, ec);
  fs::create_directories(dir);
  return dir;
}

TEST(RemoveTree, RemovesANestedFolderWithFilesAndLinks) {
  const fs::path dir = fresh_dir("sdtune-remove-tree");
  const fs::path outside = dir.string() + "-outside";
  fs::create_directories(outside);
  std::ofstream(outside / "keep.txt") << "kept";
  fs::create_directories(dir / "a" / "b" / "c");
  std::ofstream(dir / "a" / "one.txt") << "1";
  std::ofstream(dir / "a" / "b" / "c" / "two.bin") << "22";
  fs::create_directory_symlink(outside, dir / "a" / "link");  // removed, not followed
  EXPECT_EQ(remove_tree(dir), 7u);                            // 3 files/links + 4 folders
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fs::exists(outside / "keep.txt"));
  std::error_code ec;
  EXPECT_EQ(remove_tree(outside, ec), 2u);
  EXPECT_FALSE(ec);
}

TEST(RemoveTree, AMissingPathIsNothingAndAFileIsOneEntry) {
  const fs::path dir = fresh_dir("sdtune-remove-tree-file");
  std::error_code ec;
  EXPECT_EQ(remove_tree(dir / "missing", ec), 0u);
  EXPECT_FALSE(ec);
  std::ofstream(dir / "f") << "x";
  EXPECT_EQ(remove_tree(dir / "f"), 1u);
  EXPECT_FALSE(fs::exists(dir / "f"));
  remove_tree(dir);
}

TEST(RemoveTree, AFailureIsReportedWithThePath) {
  // A path through a regular file cannot even be looked at (ENOTDIR), root or not.
  const fs::path dir = fresh_dir("sdtune-remove-tree-bad");
  std::ofstream(dir / "file") << "x";
  std::error_code ec;
  EXPECT_EQ(remove_tree(dir / "file" / "sub", ec), 0u);
  EXPECT_EQ(ec, std::errc::not_a_directory);
  try {
    remove_tree(dir / "file" / "sub");
    FAIL() << "no error";
  } catch (const sdtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "file" / "sub").string()), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(remove_tree(dir), 2u);
}

}  // namespace
