"""`sdtune train` end to end on a tiny pipeline: outputs diffusers loads, checkpoints that resume
bit for bit, the checkpoint limit, Ctrl-C, non-finite losses, bad data, TOML configs, logs."""

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_runs import metrics

import dataset_images

R = 32


def make_images(folder, n=4, size=(48, 40), seed=0):
    """n random images larger than the resolution (so random crops and flips do something)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"caption number {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def base_args(model, data, out, *extra):
    return ["train", "--model", model, "--data", data, "--out", out, "--resolution", R, "--batch-size", 2,
            "--lr-warmup-steps", 0, "--learning-rate", 1e-3, "--quiet", *extra]


def tensors_equal(a, b):
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys(), (a, b)
    return all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def tiny(pipeline):
    return pipeline("tiny")[0]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory, sdtune_bin):
    """A short run with EMA and a checkpoint every 2 steps, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("trained")
    data = make_images(root / "data")
    out = root / "out"
    args = base_args(tiny, data, out, "--max-steps", 4, "--checkpointing-steps", 2, "--use-ema", "--random-flip",
                     "--validation-prompt", "caption number 1", "--validation-prompt", "a second prompt",
                     "--validation-steps", 2, "--validation-inference-steps", 2, "--num-validation-images", 2)
    proc = subprocess.run([str(sdtune_bin), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_diffusers_loads_the_output_and_a_checkpoint(trained, tiny):
    from diffusers import StableDiffusionPipeline

    out, _ = trained
    for folder in (out, out / "checkpoint-2"):
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        image = pipe("caption number 1", num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
        assert image.shape == (R, R, 3) and np.isfinite(image).all()
        # The UNet differs from the base model's: training changed it.
        base = load_file(Path(tiny) / "unet" / "diffusion_pytorch_model.safetensors")
        ours = pipe.unet.state_dict()
        assert any(not torch.equal(base[k], ours[k]) for k in base)


def test_pipeline_holds_ema_weights_and_state_the_trained_ones(trained):
    out, _ = trained
    state = out / "checkpoint-4" / "training_state"
    ema = load_file(state / "ema.safetensors")
    pipe_unet = load_file(out / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors")
    raw = load_file(state / "unet.safetensors")
    names = list(raw.keys())
    assert float(ema["optimization_step"]) == 4
    # Shadows are stored by index (in our parameters() order); each pipeline weight is one of them.
    shadows = [t for k, t in ema.items() if k.startswith("shadow_params.")]
    assert len(shadows) == len(pipe_unet)
    for name, weight in pipe_unet.items():
        assert sum(1 for t in shadows if t.shape == weight.shape and torch.equal(t, weight)) == 1, name
    assert set(names) == set(pipe_unet)
    assert any(not torch.equal(raw[k], pipe_unet[k]) for k in raw)
    # The final model is the last checkpoint's pipeline.
    assert tensors_equal(out / "unet" / "diffusion_pytorch_model.safetensors",
                         out / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors")


# --deterministic picks deterministic GPU kernels; on the CPU it must change nothing (the GPU side
# is bench/gpu_train_check.py's).
@pytest.mark.parametrize("deterministic", [[], ["--deterministic"]], ids=["default", "deterministic"])
def test_resume_is_bitwise(tiny, run_sdtune, tmp_path, deterministic):
    """N steps straight equal K steps, resume, N − K steps: EMA, accumulation, random crop and flip."""
    data = make_images(tmp_path / "data")
    extra = ["--use-ema", "--gradient-accumulation-steps", 2, "--random-flip", "--checkpointing-steps", 2,
             "--seed", 3, *deterministic]
    run_sdtune(*base_args(tiny, data, tmp_path / "straight", "--max-steps", 5, *extra))
    # A first run that stops at step 2 (the constant LR schedule does not depend on the total).
    run_sdtune(*base_args(tiny, data, tmp_path / "resumed", "--max-steps", 2, *extra))
    proc = run_sdtune(*base_args(tiny, data, tmp_path / "resumed", "--max-steps", 5, *extra,
                                 "--resume-from-checkpoint", "latest"))
    assert "steps: 5 (this run 3" in proc.stdout
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert tensors_equal(a / "unet/diffusion_pytorch_model.safetensors", b / "unet/diffusion_pytorch_model.safetensors")
    for name in ("unet", "optimizer", "ema", "rng_data", "rng_noise", "sampler"):
        assert tensors_equal(a / f"checkpoint-5/training_state/{name}.safetensors",
                             b / f"checkpoint-5/training_state/{name}.safetensors"), name
    # The losses logged after the resume are those of the straight run.
    straight = {m["step"]: m["loss"] for m in metrics(a)}
    resumed = {m["step"]: m["loss"] for m in metrics(b)}
    assert straight == resumed


def test_resume_from_a_named_checkpoint_and_missing_ones(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    run_sdtune(*base_args(tiny, data, out, "--max-steps", 2, "--checkpointing-steps", 1))
    proc = run_sdtune(*base_args(tiny, data, out, "--max-steps", 3, "--resume-from-checkpoint", out / "checkpoint-1"))
    assert "steps: 3 (this run 2" in proc.stdout
    proc = run_sdtune(*base_args(tiny, data, out, "--max-steps", 3, "--resume-from-checkpoint", out / "nope"),
                      check=False)
    assert proc.returncode != 0 and "checkpoint folder not found" in proc.stderr and "nope" in proc.stderr
    # "latest" with no checkpoint starts a new run, as diffusers does.
    proc = run_sdtune(*base_args(tiny, data, tmp_path / "fresh", "--max-steps", 1, "--resume-from-checkpoint",
                                 "latest"))
    assert "steps: 1 (this run 1" in proc.stdout


def test_checkpoints_total_limit_keeps_the_last(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    run_sdtune(*base_args(tiny, data, out, "--max-steps", 5, "--checkpointing-steps", 1,
                          "--checkpoints-total-limit", 2))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert [p.name for p in out.glob(".*")] == [".sdtune.lock"], "temporary folders left behind"


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tiny, sdtune_bin, tmp_path, run_sdtune):
    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    args = base_args(tiny, data, out, "--max-steps", 100000, "--checkpointing-steps", 0)
    proc = subprocess.Popen([str(sdtune_bin), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = out / "logs" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "interrupted: checkpoint saved" in stdout
    (ckpt,) = list(out.glob("checkpoint-*"))
    step = int(ckpt.name.split("-")[1])
    assert step >= 2 and json.loads((ckpt / "training_state/trainer_state.json").read_text())["step"] == step
    assert not (out / "model_index.json").exists()  # no final model: the run did not finish
    proc = run_sdtune(*base_args(tiny, data, out, "--max-steps", step + 1, "--resume-from-checkpoint", "latest"))
    assert f"steps: {step + 1} (this run 1" in proc.stdout


def test_repeated_nonfinite_losses_stop_and_keep_the_good_checkpoint(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    # An absurd learning rate: the first update sends the weights to ~1e30 and every later loss is inf/NaN.
    proc = run_sdtune(*base_args(tiny, data, out, "--max-steps", 50, "--checkpointing-steps", 1,
                                 "--checkpoints-total-limit", 1, "--learning-rate", 1e30,
                                 "--max-nonfinite-steps", 3), check=False)
    assert proc.returncode == 1
    assert "the loss was not finite for 3 optimizer steps in a row" in proc.stderr
    assert "checkpoint-1" in proc.stderr
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    skipped = [m for m in metrics(out) if m["skipped"]]
    assert len(skipped) == 3 and all(m["loss"] is None or not math.isfinite(m["loss"]) for m in skipped)


def test_bad_images_are_skipped_and_counted(tiny, run_sdtune, tmp_path):
    data = tmp_path / "data"
    rows = dataset_images.make_dataset(data, resolution=R)
    proc = run_sdtune(*base_args(tiny, data, tmp_path / "out", "--max-steps", 1))
    usable = len(rows) - 3  # corrupt.jpg, truncated.png, missing.jpg
    assert f"examples: {usable} used, 3 skipped" in proc.stdout
    for name in ("corrupt.jpg", "truncated.png", "missing.jpg"):
        assert name in proc.stdout and name in proc.stderr


def test_no_usable_image_is_an_error(tiny, run_sdtune, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    dataset_images.write_corrupt_jpeg(data / "a.jpg")
    dataset_images.write_truncated_png(data / "b.png")
    proc = run_sdtune(*base_args(tiny, data, tmp_path / "out", "--max-steps", 1), check=False)
    assert proc.returncode == 1
    assert "no usable training image (2 skipped)" in proc.stderr and str(data) in proc.stderr


def test_toml_config_and_the_saved_effective_config(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data")
    config = tmp_path / "run.toml"
    # snake_case as in the diffusers scripts, kebab-case as on our command line.
    config.write_text(f'model = "{tiny}"\ndata = "{data}"\nout = "{tmp_path / "a"}"\nresolution = {R}\n'
                      'train_batch_size = 2\nmax-steps = 7\nlearning_rate = 1e-3\nlr-warmup-steps = 0\n'
                      'use_ema = true\nvalidation-prompt = ["one", "two"]\nvalidation-steps = 0\n')
    # The command line wins over the file: 2 steps, not 7.
    run_sdtune("train", "--config", config, "--max-steps", 2, "--quiet")
    saved = (tmp_path / "a" / "checkpoint-2" / "train_config.toml").read_text()
    assert "max-steps = 2\n" in saved and "use-ema = true\n" in saved and 'validation-prompt = ["one", "two"]' in saved
    # The saved config reproduces the run.
    reproduced = saved.replace(str(tmp_path / "a"), str(tmp_path / "b")).replace("validation-prompt", "#")
    (tmp_path / "b.toml").write_text(reproduced.replace("\n#", "\n# "))
    run_sdtune("train", "--config", tmp_path / "b.toml", "--quiet")
    assert tensors_equal(tmp_path / "a/unet/diffusion_pytorch_model.safetensors",
                         tmp_path / "b/unet/diffusion_pytorch_model.safetensors")
    # Unknown keys and bad values name the file and key.
    (tmp_path / "bad.toml").write_text("lerning_rate = 1e-4\n")
    proc = run_sdtune("train", "--config", tmp_path / "bad.toml", check=False)
    assert proc.returncode == 1 and "bad.toml" in proc.stderr and "'lerning_rate': unknown option" in proc.stderr
    (tmp_path / "bad2.toml").write_text('resolution = "big"\n')
    proc = run_sdtune("train", "--config", tmp_path / "bad2.toml", check=False)
    assert proc.returncode == 1 and "'resolution'" in proc.stderr


def test_logs_metrics_tensorboard_and_validation_images(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, proc = trained
    rows = metrics(out)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) and m["lr"] == pytest.approx(1e-3) for m in rows)
    acc = EventAccumulator(str(out / "logs"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([m["loss"] for m in rows], rel=1e-6)
    grids = acc.Images("validation/grid")
    assert [g.step for g in grids] == [2, 4]
    for step in (2, 4):
        folder = out / "logs" / "validation" / f"step-{step:06d}"
        cells = sorted(p.name for p in folder.glob("prompt*.png"))
        assert cells == ["prompt0-0.png", "prompt0-1.png", "prompt1-0.png", "prompt1-1.png"]
        grid = Image.open(folder / "grid.png")
        assert grid.width > 2 * R and grid.height > 2 * R


@pytest.mark.parametrize("precision", ["bf16", "fp16", "bf16+checkpointing"])
def test_mixed_precision_trains_fp32_masters(tiny, run_sdtune, tmp_path, precision):
    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    extra = ["--gradient-checkpointing"] if "checkpointing" in precision else []
    precision = precision.split("+")[0]
    # Checkpointing recomputes under the forward's autocast state (bf16 activations, fp32 weights).
    run_sdtune(*base_args(tiny, data, out, "--max-steps", 2, "--mixed-precision", precision, *extra))
    rows = metrics(out)
    assert all(math.isfinite(m["loss"]) for m in rows)
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    scaler = load_file(out / "checkpoint-2" / "training_state" / "scaler.safetensors")
    if precision == "fp16":
        assert "loss_scale" in rows[0] and float(scaler["scale"]) == 65536.0
    else:
        assert "loss_scale" not in rows[0] and float(scaler["scale"]) == 1.0


def test_bad_options_are_one_line_errors(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data")
    for extra, message in [
        (["--mixed-precision", "fp8"], "--mixed-precision must be no, fp16 or bf16"),
        (["--resolution", 30], "--resolution must be a multiple of 8"),
        (["--lr-scheduler", "cosine_annealing"], "cosine_annealing"),
        (["--prediction-type", "x0"], "unknown prediction_type 'x0' (expected epsilon, v_prediction or sample)"),
        (["--batch-size", 0], "--batch-size: must be at least 1, got 0"),
    ]:
        proc = run_sdtune(*base_args(tiny, data, tmp_path / "out", "--max-steps", 1, *extra), check=False)
        assert proc.returncode == 1 and message in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = run_sdtune("train", "--model", tiny, "--data", tmp_path / "nowhere", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "nowhere" in proc.stderr


def test_aspect_ratio_buckets(tiny, run_sdtune, tmp_path):
    """Wide, tall and square images train together: each batch holds one bucket."""
    data = tmp_path / "data"
    make_images(data, n=2, size=(64, 32), seed=1)  # 2:1
    rng = np.random.default_rng(2)
    for i, size in enumerate([(32, 64), (32, 64), (40, 40)]):  # 1:2, 1:2, 1:1
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(data / f"x{i}.png")
    (data / "metadata.jsonl").unlink()
    out = tmp_path / "out"
    # Buckets of about 32² pixels in steps of 8: 48×24, 24×48, 32×32, ...
    proc = run_sdtune(*base_args(tiny, data, out, "--max-steps", 4, "--enable-bucket", "--min-bucket-reso", 16,
                                 "--max-bucket-reso", 64, "--bucket-reso-steps", 8, "--random-flip"))
    assert "examples: 5 used" in proc.stdout
    # kohya's rule, computed here: for each width w (steps of 8, 16..64) the tallest multiple-of-8
    # height with w·h <= 32², and its transpose; each image takes the closest aspect ratio.
    buckets = {(32, 32)}
    for w in range(16, 65, 8):
        h = min(64, (32 * 32 // w) // 8 * 8)
        if h >= 16:
            buckets |= {(w, h), (h, w)}
    pick = lambda w, h: min(sorted(buckets), key=lambda b: abs(b[0] / b[1] - w / h))
    expected = {}
    for size in [(64, 32), (64, 32), (32, 64), (32, 64), (40, 40)]:
        expected[pick(*size)] = expected.get(pick(*size), 0) + 1
    assert len(expected) == 3
    for (w, h), n in expected.items():
        assert f"bucket {w}x{h}: {n} examples" in proc.stdout, proc.stdout
    assert all(math.isfinite(m["loss"]) for m in metrics(out))
    proc = run_sdtune(*base_args(tiny, data, tmp_path / "o2", "--max-steps", 1, "--enable-bucket",
                                 "--bucket-reso-steps", 12), check=False)
    assert proc.returncode == 1 and "--bucket-reso-steps must be a positive multiple of 8" in proc.stderr


def test_stop_text_encoder_training_freezes_it_from_that_step(tiny, run_sdtune, tmp_path):
    """kohya's --stop_text_encoder_training: the text encoder trains for 2 steps, then stays as it
    was at step 2 while the UNet goes on training."""
    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    run_sdtune(*base_args(tiny, data, out, "--max-steps", 4, "--checkpointing-steps", 2, "--train-text-encoder",
                          "--stop-text-encoder-training", 2))
    te = lambda folder: load_file(folder / "text_encoder" / "model.safetensors")
    unet = lambda folder: load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    base, at2, at4 = te(Path(tiny)), te(out / "checkpoint-2"), te(out / "checkpoint-4")
    base = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in base.items()}
    assert any(not torch.equal(base[k], at2[k]) for k in at2 if k in base), "the text encoder never trained"
    assert all(torch.equal(at2[k], at4[k]) for k in at2), "the text encoder trained after step 2"
    u2, u4 = unet(out / "checkpoint-2"), unet(out / "checkpoint-4")
    assert any(not torch.equal(u2[k], u4[k]) for k in u2)
    proc = run_sdtune(*base_args(tiny, data, tmp_path / "bad", "--stop-text-encoder-training", 2), check=False)
    assert proc.returncode != 0 and "--stop-text-encoder-training needs --train-text-encoder" in proc.stderr


def test_sdxl_with_both_text_encoders_resumes_bitwise(pipeline, run_sdtune, tmp_path):
    """SDXL's two text encoders trained in full: a checkpoint holds both (in its pipeline folder) and
    the optimizer's state of each; the resumed run equals the straight one."""
    xl = pipeline("sdxl")[0]
    data = make_images(tmp_path / "data")
    extra = ["--train-text-encoder", "--checkpointing-steps", 2, "--seed", 5, "--random-flip"]
    run_sdtune(*base_args(xl, data, tmp_path / "straight", "--max-steps", 4, *extra))
    run_sdtune(*base_args(xl, data, tmp_path / "resumed", "--max-steps", 2, *extra))
    run_sdtune(*base_args(xl, data, tmp_path / "resumed", "--max-steps", 4, *extra, "--resume-from-checkpoint",
                          "latest"))
    a, b = tmp_path / "straight", tmp_path / "resumed"
    for name in ("unet/diffusion_pytorch_model", "text_encoder/model", "text_encoder_2/model"):
        assert tensors_equal(a / f"{name}.safetensors", b / f"{name}.safetensors"), name
    assert tensors_equal(a / "checkpoint-4/training_state/optimizer.safetensors",
                         b / "checkpoint-4/training_state/optimizer.safetensors")
    base = load_file(Path(xl) / "text_encoder_2/model.safetensors")
    trained = load_file(a / "text_encoder_2/model.safetensors")
    assert any(not torch.equal(base[k], trained[k]) for k in base if base[k].is_floating_point())


def test_adafactor_resumes_bitwise_in_less_state(tiny, run_sdtune, tmp_path):
    """--optimizer adafactor: a run resumed from its checkpoint equals the straight one (the
    factored moments and step counts are saved and restored), its state is a fraction of AdamW's,
    and an AdamW checkpoint is not taken for an Adafactor run."""
    data = make_images(tmp_path / "data")
    extra = ["--optimizer", "adafactor", "--checkpointing-steps", 2, "--seed", 5, "--random-flip"]
    straight = run_sdtune(*base_args(tiny, data, tmp_path / "straight", "--max-steps", 4, *extra))
    run_sdtune(*base_args(tiny, data, tmp_path / "resumed", "--max-steps", 2, *extra))
    run_sdtune(*base_args(tiny, data, tmp_path / "resumed", "--max-steps", 4, *extra, "--resume-from-checkpoint",
                          "latest"))
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert tensors_equal(a / "unet/diffusion_pytorch_model.safetensors", b / "unet/diffusion_pytorch_model.safetensors")
    assert tensors_equal(a / "checkpoint-4/training_state/optimizer.safetensors",
                         b / "checkpoint-4/training_state/optimizer.safetensors")
    state = load_file(a / "checkpoint-4/training_state/optimizer.safetensors")
    assert any(k.endswith(".exp_avg_sq_row") for k in state) and not any(k.endswith(".exp_avg") for k in state)
    # The weights moved, and by Adafactor's relative steps (the logged lr is min(1e-2, 1/sqrt(t))).
    base = load_file(Path(tiny) / "unet/diffusion_pytorch_model.safetensors")
    trained = load_file(a / "unet/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[k], trained[k]) for k in base)
    assert [m["lr"] for m in metrics(a)] == [1e-2] * 4

    adamw = run_sdtune(*base_args(tiny, data, tmp_path / "adamw", "--max-steps", 2, "--checkpointing-steps", 2))
    state_mib = lambda proc: float(proc.stdout.split("optimizer state ")[1].split(" MiB")[0])
    # Convolution kernels are factored over their 3×3 taps only (as transformers does), so this
    # conv-heavy tiny UNet saves less than SDXL, whose weights are mostly linear layers.
    assert state_mib(straight) < 0.4 * state_mib(adamw), (straight.stdout, adamw.stdout)
    proc = run_sdtune(*base_args(tiny, data, tmp_path / "adamw", "--max-steps", 4, "--optimizer", "adafactor",
                                 "--resume-from-checkpoint", "latest"), check=False)
    assert proc.returncode == 1 and "optimizer" in proc.stderr, proc.stderr


def test_channels_last_trains_the_same_weights_and_resumes_bitwise(tiny, run_sdtune, tmp_path):
    """--channels-last lays the convolutions out NHWC: the same training up to float rounding (the
    kernels differ), a model saved in the usual layout, and a bitwise resume of its own."""
    data = make_images(tmp_path / "data")
    extra = ["--checkpointing-steps", 2, "--seed", 4, "--random-flip", "--use-ema"]
    run_sdtune(*base_args(tiny, data, tmp_path / "plain", "--max-steps", 4, *extra))
    fast = ["--channels-last", "--attention-backend", "flash"]
    run_sdtune(*base_args(tiny, data, tmp_path / "nhwc", "--max-steps", 4, *extra, *fast))
    plain = load_file(tmp_path / "plain/unet/diffusion_pytorch_model.safetensors")
    nhwc = load_file(tmp_path / "nhwc/unet/diffusion_pytorch_model.safetensors")
    assert plain.keys() == nhwc.keys()
    for k in plain:
        assert plain[k].shape == nhwc[k].shape and nhwc[k].is_contiguous(), k
    # Adam moves every weight by about ±lr whatever its gradient's size, so a gradient that rounds
    # to another sign moves a weight the other way: compared over the whole model instead, the
    # two runs differ by a ten-thousandth of what training moved.
    base = load_file(Path(tiny) / "unet/diffusion_pytorch_model.safetensors")
    flat = lambda w: torch.cat([w[k].flatten() for k in sorted(w)])
    moved = (flat(plain) - flat(base)).norm()
    assert moved > 0.5  # it trained
    assert (flat(nhwc) - flat(plain)).norm() < 1e-3 * moved
    losses = [m["loss"] for m in metrics(tmp_path / "plain")], [m["loss"] for m in metrics(tmp_path / "nhwc")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)

    run_sdtune(*base_args(tiny, data, tmp_path / "resumed", "--max-steps", 2, *extra, *fast))
    run_sdtune(*base_args(tiny, data, tmp_path / "resumed", "--max-steps", 4, *extra, *fast,
                          "--resume-from-checkpoint", "latest"))
    assert tensors_equal(tmp_path / "nhwc/unet/diffusion_pytorch_model.safetensors",
                         tmp_path / "resumed/unet/diffusion_pytorch_model.safetensors")
    assert tensors_equal(tmp_path / "nhwc/checkpoint-4/training_state/optimizer.safetensors",
                         tmp_path / "resumed/checkpoint-4/training_state/optimizer.safetensors")
