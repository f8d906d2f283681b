"""`sdtune init`: a pipeline with random weights from a folder of configs. diffusers loads it with
every key its modules expect (same names and shapes as diffusers/transformers build from those
configs), the same seed gives the same weights, and a folder that is not a pipeline's configs is a
one-line error."""

import json
import shutil

import torch
from safetensors.torch import load_file


def configs_of(folder, dst):
    """The pipeline's configs, tokenizer and scheduler, without any weight file."""
    dst.mkdir()
    shutil.copy(folder / "model_index.json", dst)
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(folder / part, dst / part)
    for part in ("unet", "vae", "text_encoder"):
        (dst / part).mkdir()
        shutil.copy(folder / part / "config.json", dst / part)
    return dst


def test_init_makes_a_pipeline_diffusers_loads(pipeline, run_sdtune, tmp_path):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder, _ = pipeline("tiny")
    configs = configs_of(folder, tmp_path / "configs")
    proc = run_sdtune("init", "--config", configs, "--out", tmp_path / "a", "--seed", 1)
    run_sdtune("init", "--config", configs, "--out", tmp_path / "b", "--seed", 1)
    run_sdtune("init", "--config", configs, "--out", tmp_path / "c", "--seed", 2)
    # The keys and shapes of what diffusers/transformers build from the same configs.
    refs = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))}
    files = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
             "text_encoder": "text_encoder/model.safetensors"}
    for part, ref in refs.items():
        ours = load_file(tmp_path / "a" / files[part])
        expected = {k.removeprefix("text_model."): v.shape for k, v in ref.state_dict().items()
                    if not k.endswith("position_ids")}
        got = {k.removeprefix("text_model."): v.shape for k, v in ours.items()}
        assert got == expected, part
        assert f"{part}: {sum(v.numel() for v in ours.values())} parameters" in proc.stdout
        same = load_file(tmp_path / "b" / files[part])
        other = load_file(tmp_path / "c" / files[part])
        assert all(torch.equal(ours[k], same[k]) for k in ours)
        assert not all(torch.equal(ours[k], other[k]) for k in ours)
    # Configs and tokenizer come along unchanged; diffusers loads the pipeline and runs it.
    for part in ("unet", "vae", "text_encoder"):
        assert json.loads((tmp_path / "a" / part / "config.json").read_text()) == \
            json.loads((configs / part / "config.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a", safety_checker=None, requires_safety_checker=False)
    image = pipe("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape[-1] == 3


def test_init_needs_every_config(pipeline, run_sdtune, tmp_path):
    folder, _ = pipeline("tiny")
    configs = configs_of(folder, tmp_path / "configs")
    (configs / "vae" / "config.json").unlink()
    proc = run_sdtune("init", "--config", configs, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "vae" in proc.stderr and not (tmp_path / "out").exists()
