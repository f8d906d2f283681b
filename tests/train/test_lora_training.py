"""LoRA training (`--lora-rank`): the frozen models get PEFT-initialized adapters and only those
train. Each step's loss, and the adapters after training, equal diffusers' LoRA recipe (PEFT
adapters on diffusers' UNet and transformers' text encoder, torch's fused AdamW) run here on the
same batches and draws; the files load in diffusers; resume is bitwise; gradient checkpointing
(with dropout, whose draws it must replay) changes nothing; bad options are one-line errors."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import check
from train_runs import metrics, random_images
from safetensors.torch import load_file

R = 32
PROMPT = "a photo of sks dog"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# kohya's LoCon: also the ResNet convolutions, the down/upsamplers and SD 1.x's 1×1 proj_in/out.
LOCON_TARGETS = UNET_TARGETS + ["conv1", "conv2", "conv_shortcut", "conv", "proj_in", "proj_out"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
RANK, ALPHA, SEED, LR = 4, 8, 7, 1e-3


def lora_args(model, instance, out, *extra):
    return ["dreambooth", "--model", model, "--instance-data", instance, "--instance-prompt", PROMPT,
            "--out", out, "--resolution", R, "--center-crop", "--learning-rate", LR, "--lr-warmup-steps", 0,
            "--seed", SEED, "--checkpointing-steps", 0, "--quiet", "--lora-rank", RANK, "--lora-alpha", ALPHA,
            *extra]


def add_seeded_adapters(model, targets, generator):
    """PEFT adapters, A drawn as sdtune documents it: U(±1/√fan_in) per layer, in the sorted order of
    the module paths, from one CPU generator seeded with the run's seed; B = 0."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    model.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=True))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    params = []
    with torch.no_grad():
        for name in sorted(layers):
            a, b = layers[name].lora_A["default"].weight, layers[name].lora_B["default"].weight
            bound = 1 / math.sqrt(a[0].numel())  # fan_in: in, or in·kh·kw for a convolution
            a.copy_(torch.empty(a.shape).uniform_(-bound, bound, generator=generator))
            b.zero_()
            params += [a, b]
    return params


def reference_run(folder, instances, *, steps, batch, text_encoder, unet_targets=UNET_TARGETS):
    """diffusers' train_dreambooth_lora.py step (fp32, no prior) on our batch order and draws:
    an epoch permutes the n instances (seed + epoch); latents, noise and timesteps come from one
    generator seeded seed + 1. Returns the losses and the trained models."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder").requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(folder / "vae").requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").requires_grad_(False).train()
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    init = torch.Generator().manual_seed(SEED)
    groups = [{"params": add_seeded_adapters(unet, unet_targets, init)}]
    if text_encoder:
        groups.append({"params": add_seeded_adapters(te, TE_TARGETS, init)})
        te.train()
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=1e-2, fused=True)
    to_pixels = lambda im: torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1
    n = len(instances)

    def batches():
        epoch = 0
        while True:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch)).tolist()
            for i in range(0, n, batch):
                yield perm[i : i + batch]
            epoch += 1

    order, g = batches(), torch.Generator().manual_seed(SEED + 1)
    losses = []
    for _ in range(steps):
        idx = next(order)
        x = torch.stack([to_pixels(instances[i]) for i in idx])
        ids = tokenizer([PROMPT] * len(idx), max_length=77, padding="max_length", return_tensors="pt").input_ids
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=g) * vae.config.scaling_factor
        context = te(ids, return_dict=False)[0]
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
        pred = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, context, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, unet.eval(), te.eval()


def probe_inputs(folder):
    from transformers import CLIPTokenizer

    g = torch.Generator().manual_seed(3)
    ids = CLIPTokenizer.from_pretrained(Path(folder) / "tokenizer")(
        [PROMPT, "a photo of a dog"], max_length=77, padding="max_length", return_tensors="pt").input_ids
    return torch.randn(2, 4, R // 8, R // 8, generator=g), torch.tensor([999, 20]), ids


@pytest.mark.parametrize("text_encoder,targets", [(False, UNET_TARGETS), (True, UNET_TARGETS), (False, LOCON_TARGETS)],
                         ids=["unet", "unet+text-encoder", "unet-locon"])
def test_lora_training_matches_peft_and_loads_in_diffusers(pipeline, run_sdtune, tmp_path, text_encoder, targets):
    from diffusers import StableDiffusionPipeline

    folder, _ = pipeline("tiny")
    instances = random_images(tmp_path / "instance", 3, seed=1)
    extra = ["--batch-size", 2, "--max-steps", 3, "--lora-layers", ",".join(targets)]
    extra += ["--train-text-encoder"] if text_encoder else []
    proc = run_sdtune(*lora_args(folder, tmp_path / "instance", tmp_path / "out", *extra))
    ref_losses, ref_unet, ref_te = reference_run(folder, instances, steps=3, batch=2, text_encoder=text_encoder,
                                                 unet_targets=targets)
    ours = [m["loss"] for m in metrics(tmp_path / "out")]
    check("lora training loss step 1", torch.tensor(ours[0]), torch.tensor(ref_losses[0]), 1e-6)
    check("lora training losses", torch.tensor(ours), torch.tensor(ref_losses), 1e-5)

    # Only the adapters trained: r·(in + out) per adapted layer, as the reference counts them.
    n_ref = sum(p.numel() for m in (ref_unet, ref_te) for n, p in m.named_parameters() if "lora_" in n)
    assert f"trainable parameters: {n_ref} " in proc.stdout, proc.stdout

    # The trained adapters, loaded by diffusers from OUT, give the reference model's outputs.
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    base_unet, base_text = pipe.unet, None
    sample, t, ids = probe_inputs(folder)
    with torch.no_grad():
        base_text = pipe.text_encoder(ids).last_hidden_state
        base = pipe.unet(sample, t, base_text).sample
        pipe.load_lora_weights(tmp_path / "out")
        text = pipe.text_encoder(ids).last_hidden_state
        unet = pipe.unet(sample, t, text).sample
        ref_text = ref_te(ids).last_hidden_state
        ref = ref_unet(sample, t, ref_text).sample
    check("lora training: unet with the trained LoRA", unet, ref, 1e-4)
    check("lora training: text encoder with the trained LoRA", text, ref_text, 1e-4)
    # Training moved the outputs by far more than the tolerance: the checks are not vacuous.
    assert (ref - base).abs().max() > 100 * 1e-4 * ref.abs().max()
    if text_encoder:
        assert (ref_text - base_text).abs().max() > 100 * 1e-4 * ref_text.abs().max()
    else:
        assert torch.equal(text, base_text)
    # The kohya file holds the same adapters (alpha per layer, A1111/ComfyUI names).
    kohya = load_file(tmp_path / "out" / "lora_kohya.safetensors")
    assert kohya and all(k.startswith(("lora_unet_", "lora_te_")) for k in kohya)
    assert any(k.startswith("lora_te_") for k in kohya) == text_encoder
    assert all(v.item() == ALPHA for k, v in kohya.items() if k.endswith(".alpha"))
    if targets == LOCON_TARGETS:  # convolution adapters, kohya-named, with their kernels
        assert kohya["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].dim() == 4
        assert any("downsamplers_0_conv" in k for k in kohya) and any("proj_in" in k for k in kohya)
    # No full model was written: a LoRA run's result is its adapters.
    assert not (tmp_path / "out" / "unet").exists()


def test_lora_resume_is_bitwise(pipeline, run_sdtune, tmp_path):
    """6 steps straight equal 3 steps + resume + 3 steps, with the text encoder's adapters,
    gradient accumulation and dropout (drawn from the checkpointed generator)."""
    folder, _ = pipeline("tiny")
    random_images(tmp_path / "instance", 3, seed=1)
    common = ["--batch-size", 1, "--gradient-accumulation-steps", 2, "--train-text-encoder", "--lora-dropout", 0.2]
    run_sdtune(*lora_args(folder, tmp_path / "instance", tmp_path / "a", *common, "--max-steps", 6))
    run_sdtune(*lora_args(folder, tmp_path / "instance", tmp_path / "b", *common, "--max-steps", 3,
                          "--checkpointing-steps", 3))
    ckpt = tmp_path / "b" / "checkpoint-3"
    assert (ckpt / "pytorch_lora_weights.safetensors").is_file() and not (ckpt / "unet").exists()
    proc = run_sdtune(*lora_args(folder, tmp_path / "instance", tmp_path / "b", *common, "--max-steps", 6,
                                 "--resume-from-checkpoint", "latest"))
    assert "steps: 6 (this run 3" in proc.stdout
    a = load_file(tmp_path / "a" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "b" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = [m["loss"] for m in metrics(tmp_path / "a")], [m["loss"] for m in metrics(tmp_path / "b")]
    assert la[3:] == lb[-3:]
    # A LoRA checkpoint is not resumed as a full fine-tune (nor the reverse).
    bad = [a for a in lora_args(folder, tmp_path / "instance", tmp_path / "b", *common, "--max-steps", 7,
                                "--resume-from-checkpoint", "latest")]
    i = bad.index("--lora-rank")
    del bad[i : i + 2]
    proc = run_sdtune(*bad, check=False)
    assert proc.returncode == 1 and "a LoRA checkpoint: resume it with the run's --lora-rank" in proc.stderr


def test_gradient_checkpointing_replays_dropout(pipeline, run_sdtune, tmp_path):
    """With LoRA dropout the recomputation in backward must draw the forward's masks again: the
    run with gradient checkpointing trains exactly as the run without."""
    folder, _ = pipeline("tiny")
    random_images(tmp_path / "instance", 3, seed=1)
    common = ["--batch-size", 2, "--max-steps", 3, "--lora-dropout", 0.3, "--train-text-encoder"]
    run_sdtune(*lora_args(folder, tmp_path / "instance", tmp_path / "plain", *common))
    run_sdtune(*lora_args(folder, tmp_path / "instance", tmp_path / "ckpt", *common, "--gradient-checkpointing"))
    run_sdtune(*lora_args(folder, tmp_path / "instance", tmp_path / "nodrop", "--batch-size", 2, "--max-steps", 3,
                          "--train-text-encoder"))
    a, b, c = (load_file(tmp_path / d / "pytorch_lora_weights.safetensors") for d in ("plain", "ckpt", "nodrop"))
    # The same masks: equal losses, and adapters equal up to the rounding of a recomputed backward
    # (which AdamW's normalized steps magnify to ~1e-5 on this tiny model; other masks: ~1).
    plain, ckpt = ([m["loss"] for m in metrics(tmp_path / d)] for d in ("plain", "ckpt"))
    assert plain[0] == ckpt[0] and plain == pytest.approx(ckpt, rel=1e-5)
    for k in a:
        check("lora gradient checkpointing with dropout", b[k], a[k], 1e-3)
    # Dropout did act (else the comparison would not test the replay).
    assert max(((a[k] - c[k]).abs().max() / a[k].abs().max()).item() for k in a) > 0.1


def test_bad_lora_options(pipeline, run_sdtune, tmp_path):
    folder, _ = pipeline("tiny")
    random_images(tmp_path / "instance", 2, seed=1)
    base = lora_args(folder, tmp_path / "instance", tmp_path / "o", "--max-steps", 1)
    with_rank = lambda rank: [str(rank) if a == RANK and base[i - 1] == "--lora-rank" else a
                              for i, a in enumerate(base)]
    cases = [
        (with_rank(0), "--lora-rank: must be at least 1, got 0"),
        (with_rank(-2), "--lora-rank: must be at least 1, got -2"),
        ([*base, "--use-ema"], "--use-ema is for full fine-tuning"),
        ([*base, "--lora-dropout", 1.0], "--lora-dropout: must be in [0, 1), got 1.0"),
        ([*base, "--lora-layers", "to_qq,conv9"], "no layer of the model matches the LoRA targets (to_qq, conv9)"),
    ]
    for args, message in cases:
        proc = run_sdtune(*args, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        assert message in proc.stderr, (message, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o").exists()


def test_lora_for_plain_train(pipeline, run_sdtune, tmp_path):
    """`sdtune train` takes the same LoRA options: a captioned folder trains adapters on the UNet's
    attention and its feed-forward layers, and the result loads in diffusers."""
    from diffusers import StableDiffusionPipeline

    folder, _ = pipeline("tiny")
    random_images(tmp_path / "data", 2, seed=4)
    (tmp_path / "data" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": f"pattern {i}"}) + "\n" for i in range(2)))
    proc = run_sdtune("train", "--model", folder, "--data", tmp_path / "data", "--out", tmp_path / "out",
                      "--resolution", R, "--center-crop", "--batch-size", 2, "--max-steps", 4, "--learning-rate", 1e-2,
                      "--lr-warmup-steps", 0, "--lora-rank", 2, "--lora-layers", "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2",
                      "--checkpointing-steps", 0, "--quiet")
    layers = load_file(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    assert any(".ff.net.2." in k for k in layers) and any(".attn2.to_k." in k for k in layers)
    assert all(k.startswith("unet.") for k in layers)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    sample, t, ids = probe_inputs(folder)
    with torch.no_grad():
        context = pipe.text_encoder(ids).last_hidden_state
        before = pipe.unet(sample, t, context).sample
        pipe.load_lora_weights(tmp_path / "out")
        after = pipe.unet(sample, t, context).sample
    assert (after - before).abs().max() > 1e-3 * before.abs().max(), proc.stdout
