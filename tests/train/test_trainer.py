"""The training loop (src/train/trainer.cpp) against diffusers' train_text_to_image.py, step for
step: `sdtune train` runs a few optimizer steps on a tiny pipeline, and the same steps are
computed here with diffusers (tests/helpers/reference_training.py), drawing the same random numbers
in the same order. Each step's loss must agree with the reference's to float rounding, and the final
weights (trained and EMA) must be as close to the reference's exact (float64) run as torch's own
float32 run of it is (the helper's top says why no fixed per-element tolerance can hold on every
CPU)."""

import json
from pathlib import Path

import pytest
import torch
from parity import check
from reference_training import R, check_update, make_data, reference_run
from safetensors.torch import load_file

# The losses of step 1 depend only on the data and the draws: they must agree to float rounding.
# Later steps go through Adam, which amplifies rounding in a few elements (see the helper); the
# loss averages over all of them.
LOSS_TOLERANCE = 1e-5
FIRST_LOSS_TOLERANCE = 1e-6


def losses_of(out):
    return [json.loads(line)["loss"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


CASES = {
    "epsilon-ema-accum": dict(steps=3, batch=2, accum=2, use_ema=True),
    "snr-textencoder-linear": dict(steps=3, batch=3, accum=1, use_ema=False, snr_gamma=5.0, train_text_encoder=True,
                                   text_encoder_lr=5e-5, lr_scheduler="linear", warmup=1),
    "vprediction-offset": dict(steps=2, batch=4, accum=1, use_ema=True, prediction_type="v_prediction",
                               noise_offset=0.1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_steps_match_diffusers_training_loop(case, pipeline, run_sdtune, tmp_path):
    folder, _ = pipeline("tiny")
    images, captions = make_data(tmp_path / "data")
    c = CASES[case]
    lr, seed = 1e-3, 7
    out = tmp_path / "out"
    args = ["train", "--model", folder, "--data", tmp_path / "data", "--out", out, "--resolution", R,
            "--center-crop", "--batch-size", c["batch"], "--gradient-accumulation-steps", c["accum"],
            "--max-steps", c["steps"], "--learning-rate", lr, "--seed", seed, "--quiet",
            "--lr-scheduler", c.get("lr_scheduler", "constant"), "--lr-warmup-steps", c.get("warmup", 0)]
    if c["use_ema"]:
        args.append("--use-ema")
    if c.get("snr_gamma"):
        args += ["--snr-gamma", c["snr_gamma"]]
    if c.get("prediction_type"):
        args += ["--prediction-type", c["prediction_type"]]
    if c.get("noise_offset"):
        args += ["--noise-offset", c["noise_offset"]]
    if c.get("train_text_encoder"):
        args += ["--train-text-encoder", "--text-encoder-lr", c["text_encoder_lr"]]
    run_sdtune(*args)

    ref_losses, before, trained, averaged, te = reference_run(folder, images, captions, lr=lr, seed=seed, **c)
    _, _, exact, exact_averaged, exact_te = reference_run(folder, images, captions, lr=lr, seed=seed,
                                                          dtype=torch.float64, **c)
    ours = losses_of(out)
    assert len(ours) == c["steps"]
    check(f"{case} loss step 1", torch.tensor(ours[0]), torch.tensor(ref_losses[0]), FIRST_LOSS_TOLERANCE)
    check(f"{case} losses", torch.tensor(ours), torch.tensor(ref_losses), LOSS_TOLERANCE)

    final = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    if c["use_ema"]:
        raw = load_file(out / f"checkpoint-{c['steps']}" / "training_state" / "unet.safetensors")
        check_update(f"{case} unet", raw, trained, exact, before, lr)
        # The saved pipeline holds the EMA weights.
        check_update(f"{case} unet (EMA)", final, averaged, exact_averaged, before, lr)
    else:
        check_update(f"{case} unet", final, trained, exact, before, lr)
    if te is not None:
        # transformers 5 names CLIP weights without the "text_model." prefix that we write.
        canon = lambda sd: {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
        ours_te = canon(load_file(out / "text_encoder" / "model.safetensors"))
        base_te = canon(load_file(Path(folder) / "text_encoder" / "model.safetensors"))
        te, exact_te = ({k: v for k, v in canon(sd).items() if k in ours_te and v.is_floating_point()}
                        for sd in (te, exact_te))
        check_update(f"{case} text encoder", ours_te, te, exact_te, base_te, c["text_encoder_lr"])


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_sdxl_steps_match_diffusers_sdxl_recipe(pipeline, run_sdtune, tmp_path, train_text_encoder):
    """`sdtune train` on an SDXL pipeline against train_text_to_image_sdxl.py's loop: images wider
    than the resolution are center-cropped (resizing is the identity at this height), and each one
    is conditioned on its own size and crop: (original h, w, crop top, left, target h, w). With
    --train-text-encoder both encoders train in full as well (kohya's sdxl_train.py; diffusers' SDXL
    script freezes them), in one group at --text-encoder-lr."""
    import numpy as np
    from PIL import Image

    folder, _ = pipeline("sdxl")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    widths = [R + 16, R + 7, R, R + 40]  # center-crop offsets round((w - R) / 2): 8, 4 (3.5 to even), 0, 20
    captions = ["a red square", "a green circle", "", "two blue triangles"]
    crops, time_ids = [], []
    for i, (w, caption) in enumerate(zip(widths, captions)):
        image = (rng.random((R, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(data / f"{i}.png")
        left = int(round((w - R) / 2))
        crops.append(image[:, left:left + R])
        time_ids.append([R, w, 0, left, R, R])
    (data / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"{i}.png", "text": c}) + "\n" for i, c in enumerate(captions)))
    c = dict(steps=2, batch=2, accum=2, use_ema=False, snr_gamma=5.0)
    extra = []
    if train_text_encoder:
        c.update(train_text_encoder=True, text_encoder_lr=5e-3)
        extra = ["--train-text-encoder", "--text-encoder-lr", c["text_encoder_lr"]]
    lr, seed = 1e-3, 11
    out = tmp_path / "out"
    run_sdtune("train", "--model", folder, "--data", data, "--out", out, "--resolution", R, "--center-crop",
               "--batch-size", c["batch"], "--gradient-accumulation-steps", c["accum"], "--max-steps", c["steps"],
               "--learning-rate", lr, "--seed", seed, "--snr-gamma", c["snr_gamma"], "--quiet", *extra)
    ref_losses, before, trained, _, te = reference_run(folder, crops, captions, lr=lr, seed=seed,
                                                       sdxl_time_ids=time_ids, **c)
    _, _, exact, _, exact_te = reference_run(folder, crops, captions, lr=lr, seed=seed, sdxl_time_ids=time_ids,
                                             dtype=torch.float64, **c)
    ours = losses_of(out)
    check("sdxl loss step 1", torch.tensor(ours[0]), torch.tensor(ref_losses[0]), FIRST_LOSS_TOLERANCE)
    check("sdxl losses", torch.tensor(ours), torch.tensor(ref_losses), LOSS_TOLERANCE)
    check_update("sdxl unet", load_file(out / "unet" / "diffusion_pytorch_model.safetensors"), trained, exact,
                 before, lr)
    if train_text_encoder:
        canon = lambda sd: {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
                            for k, v in sd.items()}
        for i, name in enumerate(("text_encoder", "text_encoder_2")):
            ours_te = canon(load_file(out / name / "model.safetensors"))
            base_te = canon(load_file(Path(folder) / name / "model.safetensors"))
            ref_te, exact_ref = ({k: v for k, v in canon(sd[i]).items() if k in ours_te and v.is_floating_point()}
                                 for sd in (te, exact_te))
            check_update(f"sdxl {name}", ours_te, ref_te, exact_ref, base_te, c["text_encoder_lr"])
    else:  # the encoders are the base's
        for name in ("text_encoder", "text_encoder_2"):
            assert (out / name / "model.safetensors").read_bytes() == \
                (Path(folder) / name / "model.safetensors").read_bytes()
    # The result is an SDXL pipeline diffusers loads and runs.
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(out, add_watermarker=False)
    image = pipe("a red square", num_inference_steps=2, width=32, height=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
