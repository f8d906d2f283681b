// sdtune caption: a folder of raw images into a training set. Each image without a caption is
// captioned by BLIP (in-process, as the seed's Naruto set was) or sent to a vision-language model
// behind an OpenAI-compatible chat-completions API; the captions
// go to DIR/metadata.jsonl (or NAME.txt sidecars), which `sdtune train --data DIR` reads.
// Existing captions are kept unless --overwrite, so a rerun captions only what is missing.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "cli/number_checks.h"
#include "cli/progress.h"
#include "sdtune/caption/blip_captioner.h"
#include "sdtune/caption/caption_store.h"
#include "sdtune/caption/chat_captioner.h"
#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/warning.h"

namespace sdtune::cli {
namespace {
namespace fs = std::filesystem;

struct Args {
  std::string data, blip, blip_prompt, api_key_env = "OPENAI_API_KEY", prefix, suffix;
  std::string device = "cpu", dtype = "fp32";
  caption::ChatOptions chat;
  caption::BlipDecoding decoding;
  int64_t max_side = 1024, jobs = 4, batch_size = 8;
  bool overwrite = false, sidecar = false, quiet = false, key_env_given = false;
};

int64_t words(const std::string& text) {
  std::istringstream in(text);
  int64_t n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}

// The image as a PNG data URL, at most `max_side` pixels on its longer side (never enlarged).
std::string image_for_api(const fs::path& path, int64_t max_side) {
  const io::FittedImage image =
      io::read_image_fitted(io::ImageSource::file(path), io::kMaxImagePixels, [&](io::ImageSize s) {
        const int64_t longer = std::max(s.width, s.height);
        if (longer <= max_side) return s;
        const double f = static_cast<double>(max_side) / static_cast<double>(longer);
        return io::ImageSize{std::max<int64_t>(1, static_cast<int64_t>(s.width * f + 0.5)),
                             std::max<int64_t>(1, static_cast<int64_t>(s.height * f + 0.5))};
      });
  return io::png_data_url(image.rgb);
}

void run(Args& a) {
  const bool blip = !a.blip.empty();
  if (blip && !a.chat.base_url.empty()) throw Error("--blip and --api-base: choose one");
  if (!blip && (a.chat.base_url.empty() || a.chat.model.empty()))
    throw Error("--blip MODEL_DIR, or --api-base URL and --api-model NAME, is required");
  // The key comes from the environment only; it is never printed (errors mask it).
  if (const char* key = std::getenv(a.api_key_env.c_str()); key && *key)
    a.chat.api_key = key;
  else if (a.key_env_given && !blip)
    throw Error("--api-key-env names " + a.api_key_env + ", which is not set");
  std::optional<caption::BlipCaptioner> blip_model;
  if (blip) {
    const at::ScalarType dtype = models::parse_dtype(a.dtype);
    if (a.device == "cpu" && dtype == at::kHalf)
      throw Error("fp16 runs on the GPU only; use --dtype fp32 or bf16 on the CPU");
    blip_model.emplace(a.blip, c10::Device(a.device), dtype);
  }

  caption::CaptionStore store = caption::CaptionStore::open(a.data, a.sidecar);
  std::vector<fs::path> todo;
  int64_t kept = 0;
  for (const auto& image : store.images()) {
    if (!a.overwrite && store.has_caption(image))
      ++kept;
    else
      todo.push_back(image);
  }

  Progress progress("caption", a.quiet);
  std::mutex mutex;  // the store, the counts and the progress display
  int64_t captioned = 0, skipped = 0, failed = 0, done = 0;
  std::vector<int64_t> lengths;
  auto last_save = std::chrono::steady_clock::now();
  // One image's outcome: its caption, or why it has none (`unreadable`: the image itself).
  auto record = [&](const fs::path& image, const std::string& caption, const std::string& problem,
                    bool unreadable) {
    const std::lock_guard<std::mutex> lock(mutex);
    if (problem.empty()) {
      const std::string text = a.prefix + caption + a.suffix;
      store.set(image, text);
      ++captioned;
      lengths.push_back(words(text));
      // Saved every few seconds as well as at the end: a run stopped midway keeps its captions.
      if (std::chrono::steady_clock::now() - last_save > std::chrono::seconds(2)) {
        store.save();
        last_save = std::chrono::steady_clock::now();
      }
    } else {
      ++(unreadable ? skipped : failed);
      warn((unreadable ? "skipping " : "no caption for ") + image.string() + ": " + problem);
    }
    progress.update(++done, static_cast<int64_t>(todo.size()));
  };
  if (blip) {
    // --batch-size images at a time through the model.
    const auto batch_size = static_cast<size_t>(a.batch_size);
    for (size_t start = 0; start < todo.size(); start += batch_size) {
      std::vector<fs::path> batch;
      std::vector<at::Tensor> images;
      for (size_t i = start; i < std::min(todo.size(), start + batch_size); ++i) {
        try {
          images.push_back(io::read_image_rgb(fs::path(a.data) / todo[i]));
          batch.push_back(todo[i]);
        } catch (const Error& e) {
          record(todo[i], "", e.message(), true);
        }
      }
      if (batch.empty()) continue;
      const auto captions = blip_model->caption(images, a.blip_prompt, a.decoding);
      for (size_t i = 0; i < batch.size(); ++i)
        record(batch[i], captions[i], captions[i].empty() ? "an empty caption" : "", false);
    }
  } else {
    std::atomic<size_t> next{0};
    auto worker = [&] {
      for (size_t i; (i = next++) < todo.size();) {
        std::string text, problem;
        bool unreadable = false;
        try {
          const std::string url = image_for_api(fs::path(a.data) / todo[i], a.max_side);
          try {
            text = caption::caption_image(url, a.chat);
          } catch (const Error& e) {
            problem = e.message();
          }
        } catch (const Error& e) {
          unreadable = true;
          problem = e.message();
        }
        record(todo[i], text, problem, unreadable);
      }
    };
    std::vector<std::thread> threads;
    const int64_t n = std::min<int64_t>(a.jobs, std::max<size_t>(todo.size(), 1));
    for (int64_t t = 0; t < n; ++t) threads.emplace_back(worker);
    for (auto& t : threads) t.join();
  }
  progress.finish();
  store.save();

  std::printf("images: %zu (captioned %lld, kept %lld, skipped %lld, failed %lld)\n",
              store.images().size(), static_cast<long long>(captioned),
              static_cast<long long>(kept), static_cast<long long>(skipped),
              static_cast<long long>(failed));
  if (!lengths.empty()) {
    std::sort(lengths.begin(), lengths.end());
    double mean = 0;
    for (int64_t l : lengths) mean += static_cast<double>(l);
    mean /= static_cast<double>(lengths.size());
    std::printf("caption words: min %lld, median %lld, mean %.1f, max %lld\n",
                static_cast<long long>(lengths.front()),
                static_cast<long long>(lengths[lengths.size() / 2]), mean,
                static_cast<long long>(lengths.back()));
  }
  std::printf("captions: %s\n", a.sidecar ? "NAME.txt beside each image"
                                          : (fs::path(a.data) / "metadata.jsonl").string().c_str());
  if (failed > 0)
    throw Error(std::to_string(failed) + " of " + std::to_string(todo.size()) +
                " images got no caption (run again to retry them)");
}

}  // namespace

void add_caption(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "caption",
      "Caption a folder of images for training, with BLIP or a vision-language model over an "
      "OpenAI-compatible API (writes metadata.jsonl)");
  cmd->add_option("--data", a->data, "Folder of images (captions go to its metadata.jsonl)")
      ->required();
  cmd->add_option("--blip", a->blip,
                  "BLIP captioning model folder in transformers' layout "
                  "(Salesforce/blip-image-captioning-base or -large)");
  cmd->add_option(
      "--blip-prompt", a->blip_prompt,
      "BLIP: text every caption starts from (conditional captioning: \"a picture of\")");
  cmd->add_option("--max-length", a->decoding.max_length,
                  "BLIP: longest caption in tokens, the prompt's included")
      ->capture_default_str()
      ->check(checks::in_range(2, 512));
  cmd->add_option("--min-length", a->decoding.min_length, "BLIP: shortest caption in tokens")
      ->capture_default_str()
      ->check(checks::in_range(0, 512));
  cmd->add_option("--num-beams", a->decoding.num_beams, "BLIP: beam search width (1: greedy)")
      ->capture_default_str()
      ->check(checks::in_range(1, 64));
  cmd->add_option("--length-penalty", a->decoding.length_penalty,
                  "BLIP beam search: finished captions score log-probability / length^this")
      ->capture_default_str()
      ->check(checks::in_range(-10, 10));
  cmd->add_flag("--early-stopping", a->decoding.early_stopping,
                "BLIP beam search: stop once --num-beams captions are finished");
  cmd->add_option("--batch-size", a->batch_size, "BLIP: images per batch")
      ->capture_default_str()
      ->check(checks::in_range(1, 1024));
  cmd->add_option("--device", a->device, "BLIP: cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", a->dtype, "BLIP: fp32, fp16 (GPU only) or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  cmd->add_option("--api-base", a->chat.base_url,
                  "Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8080/v1");
  cmd->add_option("--api-model", a->chat.model, "Model name the server knows");
  cmd->add_option("--prompt", a->chat.prompt, "What the model is asked")->capture_default_str();
  auto* key = cmd->add_option("--api-key-env", a->api_key_env,
                              "Environment variable holding the API key (sent as a bearer token)")
                  ->capture_default_str();
  cmd->add_option("--api-max-side", a->max_side, "Images are sent at most this many pixels wide")
      ->capture_default_str()
      ->check(checks::at_least(16));
  cmd->add_option("--jobs", a->jobs, "Requests in flight at once")
      ->capture_default_str()
      ->check(checks::in_range(1, 256));
  cmd->add_option("--timeout", a->chat.timeout_seconds, "Seconds one request may take")
      ->capture_default_str()
      ->check(checks::positive());
  cmd->add_option("--retries", a->chat.retries,
                  "Attempts after the first, on timeouts, 429, 5xx and malformed replies")
      ->capture_default_str()
      ->check(checks::in_range(0, 100));
  cmd->add_option("--retry-delay", a->chat.retry_delay_seconds,
                  "Seconds before the first retry, doubled each time (Retry-After wins)")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--max-tokens", a->chat.max_tokens, "Longest caption, in the model's tokens")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--prefix", a->prefix, "Put before each new caption (a trigger phrase)");
  cmd->add_option("--suffix", a->suffix, "Put after each new caption");
  cmd->add_flag("--overwrite", a->overwrite, "Caption images that have a caption too");
  cmd->add_flag("--sidecar", a->sidecar, "Write NAME.txt beside each image, not metadata.jsonl");
  cmd->add_flag("--quiet", a->quiet, "No progress bar");
  cmd->callback([a, key] {
    a->key_env_given = key->count() > 0;
    run(*a);
  });
}

}  // namespace sdtune::cli
