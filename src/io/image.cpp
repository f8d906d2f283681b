#include "sdtune/io/image.h"

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>

#include <vips/vips8>

#include "sdtune/error.h"
#include "sdtune/io/atomic_write.h"

namespace sdtune::io {
namespace {

// libvips reports some problems (e.g. "not enough data" in a truncated file) only as GLib
// warnings: they are kept here, not printed, and become part of the one-line error.
thread_local std::string last_vips_warning;

void keep_warning(const gchar*, GLogLevelFlags, const gchar* message, gpointer) {
  last_vips_warning = message ? message : "";
}

void init_vips() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (VIPS_INIT("sdtune")) throw Error("cannot initialise libvips");
    // Decoding errors surface as exceptions we report.
    vips_cache_set_max(0);
    g_log_set_handler("VIPS",
                      static_cast<GLogLevelFlags>(G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE),
                      keep_warning, nullptr);
  });
}

// libvips' error text may span lines: one line, empty parts dropped, warnings appended.
std::string vips_message(const vips::VError& e) {
  std::string out;
  std::string what = std::string(e.what()) + "\n" + last_vips_warning;
  size_t start = 0;
  while (start < what.size()) {
    size_t end = what.find('\n', start);
    if (end == std::string::npos) end = what.size();
    std::string line = what.substr(start, end - start);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
    if (!line.empty() && out.find(line) == std::string::npos)
      out += (out.empty() ? "" : "; ") + line;
    start = end + 1;
  }
  last_vips_warning.clear();
  // VError copies libvips' error buffer without clearing it: clear it here, or the next failure's
  // message would repeat this one (a training run reads many files).
  vips_error_clear();
  return out.empty() ? "not a readable image" : out;
}

// The tensor takes over libvips' buffer rather than copying it: one copy of the pixels at the peak.
at::Tensor to_tensor(vips::VImage img) {
  const int64_t w = img.width(), h = img.height();
  size_t size = 0;
  void* mem = img.write_to_memory(&size);
  if (size != static_cast<size_t>(w * h * 3)) {
    g_free(mem);
    throw Error("libvips wrote " + std::to_string(size) + " bytes for a " + std::to_string(w) +
                "x" + std::to_string(h) + " RGB image");
  }
  return at::from_blob(
      mem, {h, w, 3}, [](void* p) { g_free(p); }, at::TensorOptions(at::kByte));
}

// fail_on=error: a truncated or corrupt file is an error, not a half-grey image.
vips::VOption* decode_options() {
  return vips::VImage::option()
      ->set("access", VIPS_ACCESS_SEQUENTIAL)
      ->set("fail_on", VIPS_FAIL_ON_ERROR);
}

// A decoded image as 8-bit sRGB, 3 bands, still lazy (nothing decoded yet): other colour spaces,
// alpha (onto white) and 16-bit samples converted, EXIF orientation not yet applied. `name` is the
// file, for errors.
vips::VImage srgb8(vips::VImage img, const std::string& name) {
  if (img.interpretation() != VIPS_INTERPRETATION_sRGB &&
      img.interpretation() != VIPS_INTERPRETATION_B_W) {
    img = img.colourspace(VIPS_INTERPRETATION_sRGB);
  }
  if (img.has_alpha())
    img =
        img.flatten(vips::VImage::option()->set("background", std::vector<double>{255, 255, 255}));
  if (img.format() != VIPS_FORMAT_UCHAR)
    img = img.colourspace(VIPS_INTERPRETATION_sRGB);  // 16-bit -> 8-bit
  if (img.bands() == 1) img = img.bandjoin(img).bandjoin(img);
  if (img.bands() != 3)
    throw Error("unsupported image: " + std::to_string(img.bands()) + " bands", name);
  return img.cast(VIPS_FORMAT_UCHAR);
}

// The EXIF orientation (1-8; 1 is upright, 5-8 swap width and height).
int orientation(const vips::VImage& img) {
  if (img.get_typeof(VIPS_META_ORIENTATION) == 0) return 1;
  const int o = img.get_int(VIPS_META_ORIENTATION);
  return o >= 1 && o <= 8 ? o : 1;
}

// Lanczos-3 to exactly width × height.
vips::VImage resize_to(const vips::VImage& img, int64_t width, int64_t height) {
  const double sx = static_cast<double>(width) / img.width(),
               sy = static_cast<double>(height) / img.height();
  return img.resize(sx,
                    vips::VImage::option()->set("vscale", sy)->set("kernel", VIPS_KERNEL_LANCZOS3));
}

// The file or buffer, opened lazily: only the header is read.
vips::VImage open(const ImageSource& source) {
  if (source.data)
    // new_from_buffer does not copy `data`: callers finish with the image before returning.
    return vips::VImage::new_from_buffer(source.data, source.size, "", decode_options());
  if (!std::filesystem::is_regular_file(source.name))
    throw Error("image file not found", source.name.string());
  return vips::VImage::new_from_file(source.name.c_str(), decode_options());
}

// `read()` with libvips' errors made one line naming the file.
template <typename Read>
auto reading(const ImageSource& source, Read read) {
  init_vips();
  try {
    return read(source.name.string());
  } catch (const vips::VError& e) {
    throw Error("cannot read image: " + vips_message(e), source.name.string());
  }
}

// Refuses an image whose header declares more than `max_pixels`: libvips opens files lazily, so
// nothing has been decoded yet.
vips::VImage within_limit(vips::VImage img, int64_t max_pixels, const std::string& name) {
  const int64_t pixels = static_cast<int64_t>(img.width()) * img.height();
  if (pixels > max_pixels)
    throw Error("image is " + std::to_string(img.width()) + "x" + std::to_string(img.height()) +
                    " (" + std::to_string(pixels) + " pixels), over the limit of " +
                    std::to_string(max_pixels) +
                    " (--max-image-pixels): a decompression bomb? not decoded",
                name);
  return img;
}

vips::VImage from_tensor(const at::Tensor& rgb) {
  TORCH_CHECK(rgb.dim() == 3 && rgb.size(2) == 3 && rgb.scalar_type() == at::kByte,
              "expected uint8 [H,W,3]");
  at::Tensor c = rgb.contiguous().cpu();
  // new_from_memory does not copy: copy_memory() detaches the image from the tensor's buffer.
  return vips::VImage::new_from_memory(c.data_ptr(), c.numel(), static_cast<int>(c.size(1)),
                                       static_cast<int>(c.size(0)), 3, VIPS_FORMAT_UCHAR)
      .copy_memory();
}

// Black text on white, RGB, wrapped to `width` pixels.
vips::VImage label(const std::string& text, int width) {
  if (text.empty()) return vips::VImage::black(1, 1).invert().bandjoin_const({255, 255});
  // vips' text takes Pango markup: escape it so that prompts are shown literally.
  gchar* escaped = g_markup_escape_text(text.c_str(), -1);
  vips::VImage mask =
      vips::VImage::text(escaped, vips::VImage::option()->set("width", width)->set("dpi", 96));
  g_free(escaped);
  vips::VImage ink = mask.invert();  // the mask is 255 where ink is: invert for black on white
  return ink.bandjoin(ink).bandjoin(ink).cast(VIPS_FORMAT_UCHAR);
}

// `img` centred on a white canvas of width × height.
vips::VImage pad_to(const vips::VImage& img, int width, int height) {
  return img.gravity(VIPS_COMPASS_DIRECTION_CENTRE, width, height,
                     vips::VImage::option()->set("extend", VIPS_EXTEND_WHITE));
}

}  // namespace

at::Tensor read_image_rgb(const std::filesystem::path& path, int64_t max_pixels) {
  const ImageSource source = ImageSource::file(path);
  return reading(source, [&](const std::string& name) {
    return to_tensor(srgb8(within_limit(open(source), max_pixels, name), name).autorot());
  });
}

at::Tensor read_image_rgb(const void* data, size_t size, const std::string& name,
                          int64_t max_pixels) {
  const ImageSource source = ImageSource::memory(data, size, name);
  return reading(source, [&](const std::string&) {
    return to_tensor(srgb8(within_limit(open(source), max_pixels, name), name).autorot());
  });
}

FittedImage read_image_fitted(const ImageSource& source, int64_t max_pixels, const FitSize& fit) {
  return reading(source, [&](const std::string& name) {
    vips::VImage img = within_limit(open(source), max_pixels, name);
    const int turn = orientation(img);
    const bool swaps = turn >= 5;
    const int64_t w = img.width(), h = img.height();
    const ImageSize shown = swaps ? ImageSize{h, w} : ImageSize{w, h};
    const ImageSize target = fit(shown);
    if (target.width <= 0 || target.height <= 0)
      throw Error("cannot fit a " + std::to_string(shown.width) + "x" +
                      std::to_string(shown.height) + " image into " + std::to_string(target.width) +
                      "x" + std::to_string(target.height),
                  name);
    // Resized as stored, then turned: the turn needs the whole image, which is now the small one.
    const ImageSize stored = swaps ? ImageSize{target.height, target.width} : target;
    vips::VImage pixels = srgb8(img, name);
    if (stored != ImageSize{w, h}) {
      // Enlarging reads the source out of order: decode it first (it is the smaller image).
      if (stored.width * stored.height > w * h) pixels = pixels.copy_memory();
      pixels = resize_to(pixels, stored.width, stored.height);
    }
    if (turn != 1) pixels = pixels.copy_memory().autorot();
    return FittedImage{to_tensor(pixels), shown};
  });
}

ImageSize check_image(const ImageSource& source, int64_t max_pixels) {
  return reading(source, [&](const std::string& name) {
    vips::VImage img = within_limit(open(source), max_pixels, name);
    // avg() pulls every pixel through the decoder, a few lines at a time, keeping none.
    (void)srgb8(img, name).avg();
    const int64_t w = img.width(), h = img.height();
    return orientation(img) >= 5 ? ImageSize{h, w} : ImageSize{w, h};
  });
}

at::Tensor resize_image(const at::Tensor& rgb, int64_t width, int64_t height) {
  init_vips();
  return to_tensor(resize_to(from_tensor(rgb), width, height));
}

at::Tensor labelled_grid(const std::vector<at::Tensor>& cells, int64_t rows, int64_t cols,
                         const std::vector<std::string>& given_row_labels,
                         const std::vector<std::string>& given_col_labels) {
  init_vips();
  TORCH_CHECK(static_cast<int64_t>(cells.size()) == rows * cols && rows > 0 && cols > 0,
              "grid cell count");
  // No labels: blank ones. Otherwise one per row / column.
  const auto labels = [](const std::vector<std::string>& given, int64_t n, const char* what) {
    if (given.empty()) return std::vector<std::string>(n, "");
    TORCH_CHECK(static_cast<int64_t>(given.size()) == n, "grid: ", given.size(), " ", what,
                " labels for ", n, " ", what, "s");
    return given;
  };
  const std::vector<std::string> row_labels = labels(given_row_labels, rows, "row");
  const std::vector<std::string> col_labels = labels(given_col_labels, cols, "column");
  constexpr int kGap = 6, kLabelWidth = 220;
  const int cell_w = static_cast<int>(cells[0].size(1)),
            cell_h = static_cast<int>(cells[0].size(0));
  std::vector<vips::VImage> row_texts, col_texts;
  int label_w = 0, header_h = 0;
  for (const auto& t : row_labels) {
    row_texts.push_back(label(t, kLabelWidth));
    label_w = std::max(label_w, row_texts.back().width());
  }
  for (const auto& t : col_labels) {
    col_texts.push_back(label(t, std::max(cell_w, 64)));
    header_h = std::max(header_h, col_texts.back().height());
  }
  const int col_w = std::max(cell_w, header_h > 0 ? col_texts[0].width() : 0);
  auto join_right = [](const vips::VImage& a, const vips::VImage& b) {
    return a.join(b, VIPS_DIRECTION_HORIZONTAL,
                  vips::VImage::option()
                      ->set("expand", true)
                      ->set("shim", kGap)
                      ->set("background", std::vector<double>{255, 255, 255}));
  };
  auto join_below = [](const vips::VImage& a, const vips::VImage& b) {
    return a.join(b, VIPS_DIRECTION_VERTICAL,
                  vips::VImage::option()
                      ->set("expand", true)
                      ->set("shim", kGap)
                      ->set("background", std::vector<double>{255, 255, 255}));
  };
  // Header: blank corner, then each column's label.
  vips::VImage grid = pad_to(label("", 1), label_w + kGap, header_h + kGap);
  for (int64_t c = 0; c < cols; ++c) {
    int w = std::max(col_w, col_texts[c].width());
    grid = join_right(grid, pad_to(col_texts[c], w, header_h));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int row_h = std::max(cell_h, row_texts[r].height());
    vips::VImage row = pad_to(row_texts[r], label_w + kGap, row_h);
    for (int64_t c = 0; c < cols; ++c) {
      int w = std::max(col_w, col_texts[c].width());
      row = join_right(row, pad_to(from_tensor(cells[r * cols + c]), w, row_h));
    }
    grid = join_below(grid, row);
  }
  return to_tensor(pad_to(grid, grid.width() + 2 * kGap, grid.height() + 2 * kGap));
}

std::string png_data_url(const at::Tensor& rgb) {
  return "data:image/png;base64," + base64_encode(encode_png(rgb));
}

std::string base64_encode(std::string_view bytes) {
  std::unique_ptr<gchar, decltype(&g_free)> text(
      g_base64_encode(reinterpret_cast<const guchar*>(bytes.data()), bytes.size()), g_free);
  return text.get();
}

std::string base64_decode(std::string_view text) {
  for (const char c : text)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=' ||
          c == '\n' || c == '\r'))
      throw Error("not base64 text");
  // g_base64_decode takes a NUL-terminated string.
  const std::string copy(text);
  gsize size = 0;
  std::unique_ptr<guchar, decltype(&g_free)> bytes(g_base64_decode(copy.c_str(), &size), g_free);
  return std::string(reinterpret_cast<const char*>(bytes.get()), size);
}

std::string encode_png(const at::Tensor& rgb, const std::map<std::string, std::string>& text) {
  init_vips();
  try {
    vips::VImage img = from_tensor(rgb);
    int i = 0;
    for (const auto& [key, value] : text)
      img.set(("png-comment-" + std::to_string(i++) + "-" + key).c_str(), value.c_str());
    VipsBlob* blob = img.pngsave_buffer();
    std::string bytes(static_cast<const char*>(blob->area.data), blob->area.length);
    vips_area_unref(VIPS_AREA(blob));
    return bytes;
  } catch (const vips::VError& e) {
    throw Error("cannot encode PNG: " + vips_message(e));
  }
}

void write_png(const std::filesystem::path& path, const at::Tensor& rgb,
               const std::map<std::string, std::string>& text) {
  init_vips();
  io::write_file_atomically(
      path,
      [&](const std::filesystem::path& tmp) {
        try {
          vips::VImage img = from_tensor(rgb);
          int i = 0;
          for (const auto& [key, value] : text)
            img.set(("png-comment-" + std::to_string(i++) + "-" + key).c_str(), value.c_str());
          img.pngsave(tmp.c_str());
        } catch (const vips::VError& e) {
          throw Error("cannot write PNG: " + vips_message(e), path.string());
        }
      },
      io::Existing::Refuse);
}

}  // namespace sdtune::io
