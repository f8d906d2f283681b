// models::prefer_attention_backend: the named SDPA kernel first, the others behind it in
// PyTorch's own order; "auto" puts PyTorch's order back.
#include "sdtune/models/attention_backend.h"

#include <gtest/gtest.h>

#include <string>

#include "sdtune/error.h"

namespace sdtune::models {
namespace {

TEST(AttentionBackend, PreferredFirstOthersKeepTheirOrder) {
  prefer_attention_backend("auto");
  const std::string original = attention_backend_order();
  for (const std::string name : {"cudnn", "flash", "efficient", "math"}) {
    prefer_attention_backend(name);
    const std::string order = attention_backend_order();
    EXPECT_EQ(order.rfind(name + ",", 0), 0u) << order;
    // Taking `name` out of both leaves the same sequence.
    auto without = [&](std::string s) {
      const auto at = s.find(name);
      s.erase(at, name.size() + (at + name.size() < s.size() ? 1 : 0));
      if (!s.empty() && s.back() == ',') s.pop_back();
      return s;
    };
    EXPECT_EQ(without(order), without(original)) << order << " vs " << original;
  }
  prefer_attention_backend("auto");
  EXPECT_EQ(attention_backend_order(), original);
}

TEST(AttentionBackend, UnknownNamesAreErrors) {
  EXPECT_THROW(prefer_attention_backend("xformers"), Error);
  EXPECT_THROW(prefer_attention_backend("overrideable"), Error);
  try {
    prefer_attention_backend("fast");
    ADD_FAILURE() << "no error for 'fast'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'fast'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("cudnn"), std::string::npos);
  }
}

}  // namespace
}  // namespace sdtune::models
