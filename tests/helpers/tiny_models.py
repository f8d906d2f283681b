"""Random Stable Diffusion pipelines built with diffusers/transformers at test time.

Three families (the parity matrix of the foundation issue):
- "tiny":  the smallest SD 1.x-shaped pipeline (quick_gelu text encoder, conv projections);
- "sd2":   SD 2.x-style (linear projections, per-block head counts, cross_attention_dim 1024,
           upcast_attention, gelu text encoder padding with "!");
- "sd15":  SD 1.5's exact unet/vae/text_encoder configs with random weights;
and "sdxl": SDXL's shape (no attention in the first level, deeper transformers further down,
text_time conditioning, two text encoders whose widths add up to the context width).
"""

from pathlib import Path

import torch

from clip_vocab import SD1_PAD, SD2_PAD, write_clip_tokenizer

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

CONFIGS = {
    "tiny": dict(
        unet=dict(
            sample_size=16, block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            cross_attention_dim=32, attention_head_dim=4,
        ),
        vae=dict(
            block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32,
        ),
        text=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2,
        ),
        pad=SD1_PAD,
    ),
    "sd2": dict(
        unet=dict(
            sample_size=24, block_out_channels=[32, 64, 64], layers_per_block=[1, 2, 1], norm_num_groups=16,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            cross_attention_dim=1024, attention_head_dim=[2, 4, 8], use_linear_projection=True,
            upcast_attention=True, flip_sin_to_cos=True, freq_shift=0,
        ),
        vae=dict(
            block_out_channels=[16, 32, 32], layers_per_block=2, norm_num_groups=16, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, sample_size=32,
        ),
        text=dict(
            vocab_size=49408, hidden_size=1024, intermediate_size=128, num_hidden_layers=2, num_attention_heads=16,
            max_position_embeddings=77, hidden_act="gelu", eos_token_id=49407, bos_token_id=49406, pad_token_id=0,
        ),
        pad=SD2_PAD,
    ),
    "sd15": dict(unet=SD15_UNET, vae=SD15_VAE, text=SD15_TEXT, pad=SD1_PAD),
    # "sd2" with one layers_per_block for all levels, which diffusers' single-file reader needs.
    "tiny-sd2": None,
    # SD 1.x-shaped with three levels of two layers and attention at both ends, not in the middle:
    # the single-file layout numbers its blocks through all levels. (diffusers' single-file reader
    # takes one layers_per_block for all levels.)
    "tiny-deep": dict(
        unet=dict(
            sample_size=16, block_out_channels=[16, 32, 32], layers_per_block=2, norm_num_groups=8,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"],
            cross_attention_dim=32, attention_head_dim=4,
        ),
        vae=dict(
            block_out_channels=[16, 32, 32], layers_per_block=2, norm_num_groups=8, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, sample_size=32,
        ),
        text=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2,
        ),
        pad=SD1_PAD,
    ),
}


def _perturb_norms(module, generator):
    """Random affine parameters for every norm layer: diffusers initialises them to the identity,
    which would let a mix-up of weight and bias (or of two norms) pass unnoticed."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=generator))


def _random_models(cfg, seed):
    """The random UNet, VAE, text encoder (and, with cfg["text_2"], SDXL's second, projected one) of
    a config, seeded, with perturbed norms, in eval mode."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    models = [UNet2DConditionModel(**cfg["unet"]), AutoencoderKL(**cfg["vae"]),
              CLIPTextModel(CLIPTextConfig(**cfg["text"]))]
    if "text_2" in cfg:
        models.append(CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_2"])))
    for m in models:
        _perturb_norms(m, g)
        m.eval()
    return models


def build_pipeline(kind, directory, seed=0):
    """Saves a random pipeline of the given kind to `directory` (diffusers layout); returns it."""
    if kind in ("sdxl", "file-sdxl"):
        return build_sdxl_pipeline(directory, seed, kind)
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    cfg = CONFIGS[kind]
    directory = Path(directory)
    unet, vae, text_encoder = _random_models(cfg, seed)

    tok_dir = directory / "_tokenizer_src"
    write_clip_tokenizer(tok_dir, pad_token=cfg["pad"])
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        steps_offset=1, set_alpha_to_one=False,
        prediction_type="v_prediction" if kind in ("sd2", "file-sd2") else "epsilon",
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    # Published SD folders carry vocab.json/merges.txt; transformers 5 writes tokenizer.json only.
    write_clip_tokenizer(directory / "tokenizer", pad_token=cfg["pad"])
    return pipe

CONFIGS["tiny-sd2"] = dict(CONFIGS["sd2"], unet=dict(CONFIGS["sd2"]["unet"], layers_per_block=1))

# Tiny pipelines whose every setting that tensor shapes cannot show follows the published SD 1.x /
# SD 2.x configs (32 norm groups; SD 1.x: 8 UNet heads; SD 2.x: heads 64 wide, linear projections,
# v-prediction with upcast attention; text encoders with 64-wide heads): what a single file read
# without --config must come back as.
_FILE_VAE = dict(
    block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=32, latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
)
CONFIGS["file-sd1"] = dict(
    unet=dict(
        sample_size=64, block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=32,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=64, attention_head_dim=8,
    ),
    vae=dict(_FILE_VAE, sample_size=512),
    text=dict(
        vocab_size=49408, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2,
    ),
    pad=SD1_PAD,
)
CONFIGS["file-sd2"] = dict(
    unet=dict(
        sample_size=96, block_out_channels=[64, 128], layers_per_block=1, norm_num_groups=32,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=64, attention_head_dim=[1, 2], use_linear_projection=True, upcast_attention=True,
    ),
    vae=dict(_FILE_VAE, sample_size=768),
    text=dict(
        vocab_size=49408, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu", eos_token_id=49407, bos_token_id=49406, pad_token_id=0,
    ),
    pad=SD2_PAD,
)


# SDXL base's exact UNet config, and a scaled-down one for CPU benchmarks (channels halved, the
# deepest level's transformers 10 -> 4; heads, context width and the text_time conditioning kept).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], block_out_channels=[320, 640, 1280],
    layers_per_block=2, attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_embed_type_num_heads=64, addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
SDXL_UNET_SCALED = dict(SDXL_UNET, block_out_channels=[160, 320, 640], transformer_layers_per_block=[1, 2, 4],
                        sample_size=32)

# SDXL's layout at toy size: SDXL's own unet config has down blocks [DownBlock2D, CrossAttn x2],
# transformer depths [1, 2, 10], 64-wide heads, addition_time_embed_dim 256 and
# projection_class_embeddings_input_dim 2816 = 1280 (pooled, projected text) + 6 x 256.
SDXL_ADD_TIME_DIM = 8
SDXL_TEXT_2 = dict(
    vocab_size=49408, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=24, eos_token_id=2, pad_token_id=1,
)
CONFIGS["sdxl"] = dict(
    unet=dict(
        sample_size=16, block_out_channels=[32, 64, 64], layers_per_block=2, norm_num_groups=16,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 1, 2], attention_head_dim=[2, 4, 4], use_linear_projection=True,
        cross_attention_dim=32 + 48, addition_embed_type="text_time", addition_embed_type_num_heads=64,
        addition_time_embed_dim=SDXL_ADD_TIME_DIM,
        projection_class_embeddings_input_dim=SDXL_TEXT_2["projection_dim"] + 6 * SDXL_ADD_TIME_DIM,
    ),
    vae=dict(
        block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32,
        scaling_factor=0.13025, force_upcast=True,
    ),
    text=dict(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2,
    ),
    text_2=SDXL_TEXT_2,
    pad=SD1_PAD,
    pad_2=SD2_PAD,
)


def build_sdxl_pipeline(directory, seed=0, kind="sdxl"):
    """Saves a random SDXL-shaped StableDiffusionXLPipeline to `directory`; returns it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    cfg = CONFIGS[kind]
    directory = Path(directory)
    unet, vae, text_encoder, text_encoder_2 = _random_models(cfg, seed)
    tokenizers = []
    for name, pad in (("_tokenizer_src", cfg["pad"]), ("_tokenizer_2_src", cfg["pad_2"])):
        write_clip_tokenizer(directory / name, pad_token=pad)
        tokenizers.append(CLIPTokenizer.from_pretrained(directory / name))
    # SDXL base's scheduler config.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear",
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    write_clip_tokenizer(directory / "tokenizer", pad_token=cfg["pad"])
    write_clip_tokenizer(directory / "tokenizer_2", pad_token=cfg["pad_2"])
    return pipe

# SDXL at toy size with every setting that tensor shapes cannot show as SDXL base publishes it
# (32 norm groups, 64-wide heads in the UNet and both text encoders, 1024² images, the VAE scaled by
# 0.13025 and upcast): what an SDXL single file read without --config must come back as.
_FILE_TEXT_2 = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
CONFIGS["file-sdxl"] = dict(
    unet=dict(
        sample_size=128, block_out_channels=[64, 64, 128], layers_per_block=1, norm_num_groups=32,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 1, 2], attention_head_dim=[1, 1, 2], use_linear_projection=True,
        cross_attention_dim=64 + 64, addition_embed_type="text_time", addition_embed_type_num_heads=64,
        addition_time_embed_dim=SDXL_ADD_TIME_DIM,
        projection_class_embeddings_input_dim=_FILE_TEXT_2["projection_dim"] + 6 * SDXL_ADD_TIME_DIM,
    ),
    vae=dict(_FILE_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    text=dict(
        vocab_size=49408, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ),
    text_2=_FILE_TEXT_2,
    pad=SD1_PAD,
    pad_2=SD2_PAD,
)
