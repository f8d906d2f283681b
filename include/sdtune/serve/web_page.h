#pragma once
// The page `sdtune serve` answers at /: one HTML file with its styles and script inline and
// nothing fetched from elsewhere (src/serve/web_page.html, built into the binary). It talks to the
// server through the same A1111 API as any other client: prompt, negative prompt, model, LoRA and
// scale, sampler, steps, guidance, seed, size and count; live progress with the latents' preview;
// a gallery of downloadable PNGs (with their parameters); and a compare mode of prompts × seeds.
#include <string_view>

namespace sdtune::serve {

std::string_view web_page();

}  // namespace sdtune::serve
