"""Optimizer parity: sdtune's AdamW, LR schedules and EMA (sdtune_optim_check) against
torch.optim.AdamW, diffusers.optimization.get_scheduler and diffusers.training_utils.EMAModel run
on the same parameters and the same gradients, in the order a diffusers training script runs them:
optimizer.step(), lr_scheduler.step(), zero_grad(set_to_none=True), ema.step()."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from parity import check
from safetensors.torch import load_file, save_file
from binaries import built_binary

REPO = Path(__file__).resolve().parents[2]
SHAPES = [(8, 4), (4,), (3, 5, 2), (7,)]  # group 0: params 0, 1; group 1: params 2, 3
FROZEN_SHAPE = (6,)
STEPS, WARMUP, TOTAL, CYCLES = 14, 3, 11, 2  # runs past TOTAL to cover the schedules' tails
LR, WD = (1e-3, 4e-4), (1e-2, 0.0)
# Steps at which a parameter gets no gradient (torch skips it and leaves its state alone).
NO_GRAD = {(0, 1), (2, 3), (5, 3), (6, 0)}
SCHEDULES = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
EMA_WARMUP = dict(use_ema_warmup=True, update_after_step=2, min_decay=0.05, power=3 / 4)


@pytest.fixture(scope="module")
def driver():
    return built_binary("sdtune_optim_check")


def make_inputs(scale=1.0):
    g = torch.Generator().manual_seed(0)
    inputs = {f"param.{j}": torch.randn(s, generator=g) for j, s in enumerate(SHAPES)}
    inputs["frozen"] = torch.randn(FROZEN_SHAPE, generator=g)
    for k in range(STEPS):
        for j, s in enumerate(SHAPES):
            # Varying magnitudes so that the second moments differ between elements and steps.
            grad = torch.randn(s, generator=g) * (0.1 + k % 4)
            if (k, j) not in NO_GRAD:
                inputs[f"grad.{k}.{j}"] = grad * scale
        inputs[f"frozen.{k}"] = torch.randn(FROZEN_SHAPE, generator=g)
    return inputs


def run_sdtune(driver, tmp_path, inputs, schedule, *extra):
    inp, out = tmp_path / f"{schedule}_in.safetensors", tmp_path / f"{schedule}_out.safetensors"
    save_file(inputs, inp)
    args = [driver, "--inputs", inp, "--out", out, "--steps", STEPS, "--schedule", schedule, "--warmup", WARMUP,
            "--total", TOTAL, "--num-cycles", CYCLES, "--lr", f"{LR[0]!r},{LR[1]!r}", "--wd", f"{WD[0]!r},{WD[1]!r}",
            *extra]
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return load_file(out)


def run_reference(inputs, schedule, fused, scale=None, found_inf_step=-1):
    """The diffusers training loop's optimizer part, on the same gradients."""
    params = [torch.nn.Parameter(inputs[f"param.{j}"].clone()) for j in range(len(SHAPES))]
    frozen = torch.nn.Parameter(inputs["frozen"].clone(), requires_grad=False)
    model = params + [frozen]
    groups = [
        {"params": params[:2], "lr": LR[0], "weight_decay": WD[0]},
        {"params": params[2:], "lr": LR[1], "weight_decay": WD[1]},
    ]
    opt = torch.optim.AdamW(groups, lr=LR[0], betas=(0.9, 0.999), eps=1e-8, fused=fused, foreach=None if fused else False)
    sched = get_scheduler(schedule, opt, num_warmup_steps=WARMUP, num_training_steps=TOTAL, num_cycles=CYCLES)
    emas = {"ema": EMAModel(model), "ema_warmup": EMAModel(model, **EMA_WARMUP)}
    lrs, decays = [], {name: [] for name in emas}
    for k in range(STEPS):
        lrs.append([group["lr"] for group in opt.param_groups])
        for j, p in enumerate(params):
            grad = inputs.get(f"grad.{k}.{j}")
            p.grad = None if grad is None else grad.clone()
        if scale is not None:  # what GradScaler.step hands the fused optimizer
            opt.grad_scale = torch.tensor(scale)
            opt.found_inf = torch.tensor(1.0 if k == found_inf_step else 0.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            frozen.copy_(inputs[f"frozen.{k}"])
        for name, ema in emas.items():
            ema.step(model)
            decays[name].append(ema.cur_decay_value)
    return params, frozen, opt, emas, torch.tensor(lrs, dtype=torch.float64), decays


def compare(tag, ours, ref, bitwise):
    params, frozen, opt, emas, lrs, decays = ref
    for g in range(2):
        check(f"lr[{tag}]", ours[f"lr.{g}"], lrs[:, g], tolerance=1e-12)
    for j, p in enumerate(params):
        g, i = (0, j) if j < 2 else (1, j - 2)
        state = opt.state[p]
        pairs = [
            (f"param[{tag}]", ours[f"param.{j}"], p.detach()),
            (f"exp_avg[{tag}]", ours[f"opt.group{g}.param{i}.exp_avg"], state["exp_avg"]),
            (f"exp_avg_sq[{tag}]", ours[f"opt.group{g}.param{i}.exp_avg_sq"], state["exp_avg_sq"]),
        ]
        for component, a, b in pairs:
            check(component, a, b, tolerance=1e-6)
            if bitwise:
                assert torch.equal(a, b), f"{component} param {j}: not bitwise equal to torch's fused AdamW"
        assert ours[f"opt.group{g}.param{i}.step"].item() == float(state["step"]), f"step count of param {j}"
    assert torch.equal(ours["frozen"], frozen.detach())
    for name, ema in emas.items():
        assert ours[f"{name}.decay"].tolist() == decays[name], name
        for j, shadow in enumerate(ema.shadow_params):
            check(f"{name}.shadow[{tag}]", ours[f"{name}.shadow.{j}"], shadow, tolerance=1e-6)
            if bitwise:
                assert torch.equal(ours[f"{name}.shadow.{j}"], shadow), f"{name} shadow {j}"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_adamw_schedule_ema_match_torch_and_diffusers(driver, tmp_path, schedule):
    inputs = make_inputs()
    ours = run_sdtune(driver, tmp_path, inputs, schedule)
    # torch's fused kernel is the one sdtune calls: the same bits.
    compare("fused", ours, run_reference(inputs, schedule, fused=True), bitwise=True)
    # The plain (for-loop) implementation rounds differently, but within 1e-6.
    compare("unfused", ours, run_reference(inputs, schedule, fused=False), bitwise=False)


def test_loss_scaler_grad_scale_and_found_inf(driver, tmp_path):
    """fp16 loss scaling: gradients arrive scaled by S, the kernel divides by grad_scale, and the
    step with found_inf leaves weights, moments and step count as they were."""
    scale, skipped = 1024.0, 4
    inputs = make_inputs(scale)
    ours = run_sdtune(driver, tmp_path, inputs, "cosine", "--grad-scale", scale, "--found-inf-step", skipped)
    compare("scaled", ours, run_reference(inputs, "cosine", fused=True, scale=scale, found_inf_step=skipped), True)


def test_unknown_schedule_names_the_valid_ones(driver, tmp_path):
    with pytest.raises(AssertionError, match="valid: linear, cosine, cosine_with_restarts, polynomial, constant"):
        run_sdtune(driver, tmp_path, make_inputs(), "cosine_annealing")


ADAFACTOR_CASES = {
    # transformers' defaults: relative steps scaled by the parameter's RMS, no first moment.
    "defaults": (dict(), []),
    # kohya's usual SDXL settings: the LR schedule's learning rate, no parameter scaling; here
    # with a first moment and a tighter update clip as well.
    "lr-schedule-beta1": (dict(relative_step=False, scale_parameter=False, beta1=0.9, clip_threshold=0.5),
                          ["--adafactor-relative-step", "false", "--adafactor-scale-parameter", "false",
                           "--adafactor-beta1", 0.9, "--adafactor-clip-threshold", 0.5]),
    "warmup-init": (dict(warmup_init=True, decay_rate=-0.5),
                    ["--adafactor-warmup-init", "--adafactor-decay-rate", -0.5]),
}


@pytest.mark.parametrize("case", list(ADAFACTOR_CASES))
def test_adafactor_matches_transformers(driver, tmp_path, case):
    """sdtune's Adafactor against transformers.optimization.Adafactor on the same parameters and
    gradients (two groups with their own weight decay; matrices, a 3-d tensor (factored over its
    last two dimensions) and vectors; steps where a parameter has no gradient): parameters and
    every state tensor after 14 steps, step counts exact."""
    from transformers.optimization import Adafactor

    kwargs, flags = ADAFACTOR_CASES[case]
    inputs = make_inputs()
    schedule = "cosine"
    ours = run_sdtune(driver, tmp_path, inputs, schedule, "--optimizer", "adafactor", *flags)

    params = [torch.nn.Parameter(inputs[f"param.{j}"].clone()) for j in range(len(SHAPES))]
    relative = kwargs.get("relative_step", True)
    groups = [{"params": params[:2], "weight_decay": WD[0]}, {"params": params[2:], "weight_decay": WD[1]}]
    if not relative:
        for group, lr in zip(groups, LR):
            group["lr"] = lr
    opt = Adafactor(groups, lr=None if relative else LR[0], **kwargs)
    sched = None if relative else get_scheduler(schedule, opt, num_warmup_steps=WARMUP, num_training_steps=TOTAL,
                                                num_cycles=CYCLES)
    for k in range(STEPS):
        for j, p in enumerate(params):
            grad = inputs.get(f"grad.{k}.{j}")
            p.grad = None if grad is None else grad.clone()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)

    moved = 0.0
    for j, p in enumerate(params):
        g, i = (0, j) if j < 2 else (1, j - 2)
        check(f"adafactor.param[{case}]", ours[f"param.{j}"], p.detach(), tolerance=1e-6)
        moved = max(moved, (p.detach() - inputs[f"param.{j}"]).abs().max().item())
        state = opt.state[p]
        names = [n for n in ("exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col") if n in state]
        assert sorted(names) == sorted(k.rsplit(".", 1)[1] for k in ours
                                       if k.startswith(f"opt.group{g}.param{i}.") and not k.endswith(".step"))
        for name in names:
            check(f"adafactor.{name}[{case}]", ours[f"opt.group{g}.param{i}.{name}"], state[name], tolerance=1e-6)
        assert ours[f"opt.group{g}.param{i}.step"].item() == state["step"], f"step count of param {j}"
    assert moved > 1e-5  # an optimizer that does nothing would be noticed (warmup-init moves ~6e-5)
