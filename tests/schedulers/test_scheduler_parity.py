"""Scheduler parity: each sdtune scheduler runs a whole sampling loop (sdtune_scheduler_loop, with a
deterministic stand-in for the UNet) next to the diffusers scheduler running the same loop on the
same noise and the same seeded CPU generator; final latents and visited timesteps must agree."""

import inspect
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from parity import check
from safetensors.torch import load_file, save_file
from binaries import built_binary

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
SHAPE = (1, 4, 8, 8)

CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp-2m": DPMSolverMultistepScheduler,
}

# SD 1.x/2.x's betas, and diffusers' default (DDPM paper) linear ones.
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
LINEAR = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
# SD 1.5's scheduler_config.json as published: a PNDM config without timestep_spacing, so every
# other class must fall back to its own default (linspace for Euler and DPM-Solver).
SD15_JSON = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


@dataclass
class Case:
    name: str  # --scheduler
    config: dict = field(default_factory=dict)  # diffusers constructor arguments
    steps: int = 20
    karras: bool = False  # --karras (use_karras_sigmas on top of the saved config)
    eta: float | None = None  # DDIM's eta
    strength: float | None = None  # img2img
    raw_json: dict | None = None  # written as is instead of the class's save_config
    seed: int = 0

    @property
    def id(self):
        parts = [self.name + ("+karras" if self.karras else "") + (f"+eta{self.eta}" if self.eta else "")]
        parts += [f"{k}={v}" for k, v in sorted(self.config.items()) if k not in SD or self.config[k] != SD[k]]
        if self.raw_json:
            parts.append("sd15-json")
        parts.append(f"n{self.steps}")
        if self.strength:
            parts.append(f"img2img{self.strength}")
        return ",".join(parts)

    @property
    def component(self):
        return "scheduler[" + self.name + ("+karras" if self.karras else "") + ("+eta" if self.eta else "") + "]"


VARIANTS = [  # (name, karras, eta)
    ("ddpm", False, None),
    ("ddim", False, None),
    ("ddim", False, 0.5),
    ("pndm", False, None),
    ("euler", False, None),
    ("euler", True, None),
    ("euler-ancestral", False, None),
    ("dpmpp-2m", False, None),
    ("dpmpp-2m", True, None),
]
SPACINGS = ["leading", "trailing", "linspace"]
PREDICTIONS = ["epsilon", "v_prediction"]
STEP_COUNTS = [20, 5, 50, 1, 7, 30]  # 7 and 30 do not divide 1000: DDIM/PNDM's t − T/n quirk


def _cases():
    cases = []
    k = 0
    # SD's betas: every spacing and prediction type, step counts rotating.
    for name, karras, eta in VARIANTS:
        for spacing in SPACINGS:
            for prediction in PREDICTIONS:
                config = dict(SD, timestep_spacing=spacing, prediction_type=prediction)
                if name in ("ddpm", "ddim"):
                    config["clip_sample"] = False  # as SD ships them
                if name == "pndm":
                    config.update(skip_prk_steps=True, set_alpha_to_one=False)
                cases.append(Case(name, config, STEP_COUNTS[k % len(STEP_COUNTS)], karras, eta, seed=k))
                k += 1
    # Linear betas with the classes' defaults (clip_sample on for DDPM/DDIM, no steps_offset).
    for name, karras, eta in VARIANTS:
        for prediction in PREDICTIONS:
            config = dict(LINEAR, prediction_type=prediction)
            if name == "pndm":
                config["skip_prk_steps"] = True
            cases.append(Case(name, config, [10, 25][len(cases) % 2], karras, eta, seed=k))
            k += 1
    # Zero terminal SNR (Lin et al.) with trailing spacing, v-prediction as it requires.
    # (Not DPM-Solver with Karras sigmas: its rounded timesteps repeat 999 and diffusers' step
    # index then runs off the end of the schedule, an IndexError there too.)
    for name, karras, eta in VARIANTS:
        if name == "pndm" or (name == "dpmpp-2m" and karras):
            continue
        config = dict(SD, timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True)
        if name in ("ddpm", "ddim"):
            config["clip_sample"] = False
        cases.append(Case(name, config, 25, karras, eta, seed=k))
        k += 1
    # Predicting the sample itself, where diffusers supports it.
    for name in ("ddpm", "ddim", "euler", "dpmpp-2m"):
        cases.append(Case(name, dict(SD, prediction_type="sample"), 15, seed=k))
        k += 1
    # img2img (strength 0.6): set_begin_index and add_noise at the first remaining timestep.
    for name, karras, eta in VARIANTS:
        config = dict(SD, clip_sample=False) if name in ("ddpm", "ddim") else dict(SD)
        if name == "pndm":
            config["skip_prk_steps"] = True
        spacing = "leading" if name in ("ddpm", "ddim", "pndm") else "linspace"
        cases.append(Case(name, dict(config, timestep_spacing=spacing), 25, karras, eta, strength=0.6, seed=k))
        k += 1
    for name in ("euler", "dpmpp-2m"):  # trailing img2img, where timesteps may repeat
        cases.append(Case(name, dict(SD, timestep_spacing="trailing"), 10, strength=0.6, seed=k))
        k += 1
    # SD 1.5's published config (a PNDM one without timestep_spacing) under every scheduler.
    for name, karras, eta in VARIANTS:
        cases.append(Case(name, {}, 20, karras, eta, raw_json=SD15_JSON, seed=k))
        k += 1
    # Less common options.
    cases += [
        Case("ddpm", dict(LINEAR, variance_type="fixed_large"), 20, seed=k),
        Case("ddpm", dict(LINEAR, variance_type="fixed_small_log"), 20, seed=k + 1),
        Case("ddim", dict(SD, set_alpha_to_one=True, clip_sample=True, clip_sample_range=0.5), 20, seed=k + 2),
        Case("pndm", dict(SD, skip_prk_steps=True, set_alpha_to_one=True), 20, seed=k + 3),
        Case("euler", dict(SD, interpolation_type="log_linear"), 20, seed=k + 4),
        Case("euler", dict(SD, interpolation_type="log_linear"), 20, karras=True, seed=k + 5),
        Case("euler", dict(SD, final_sigmas_type="sigma_min"), 20, seed=k + 6),
        Case("euler", dict(SD, timestep_type="continuous", prediction_type="v_prediction"), 20, seed=k + 7),
        Case("euler", dict(SD, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0), 20, seed=k + 8),
        Case("dpmpp-2m", dict(SD, final_sigmas_type="sigma_min"), 20, seed=k + 9),
        Case("dpmpp-2m", dict(SD, final_sigmas_type="sigma_min", euler_at_final=True), 20, seed=k + 10),
        Case("dpmpp-2m", dict(SD, lower_order_final=False), 10, seed=k + 11),
        Case("dpmpp-2m", dict(SD, lambda_min_clipped=-2.0), 20, seed=k + 12),
        # (Not DPM-Solver with Karras and the cosine schedule: its truncated timesteps repeat and
        # diffusers runs off the end of the schedule.)
        Case("dpmpp-2m", dict(SD, beta_schedule="squaredcos_cap_v2"), 20, seed=k + 13),
        Case("euler", dict(SD, beta_schedule="squaredcos_cap_v2"), 20, karras=True, seed=k + 15),
        Case("ddim", dict(beta_schedule="squaredcos_cap_v2", clip_sample=False), 20, eta=1.0, seed=k + 14),
    ]
    return cases


CASES = _cases()


def stand_in(x, t, num_train_timesteps):
    """The same deterministic 'model' as scheduler_loop.cpp."""
    return 0.9 * x * (t.float() / num_train_timesteps) + 0.1 * torch.sin(3 * x)


def inputs(case):
    g = torch.Generator().manual_seed(1000 + case.seed)
    return {"latents": torch.randn(SHAPE, generator=g), "init": torch.randn(SHAPE, generator=g).clamp(-2, 2)}


def build(case):
    cls = CLASSES[case.name]
    scheduler = cls.from_config(case.raw_json) if case.raw_json else cls(**case.config)
    if case.karras:
        scheduler = cls.from_config(scheduler.config, use_karras_sigmas=True)
    return scheduler


def reference(case):
    """The loop of StableDiffusionPipeline (or, with a strength, StableDiffusionImg2ImgPipeline)."""
    scheduler = build(case)
    x = inputs(case)
    generator = torch.Generator("cpu").manual_seed(case.seed)
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in params:
        kwargs["generator"] = generator
    if "eta" in params:
        kwargs["eta"] = case.eta or 0.0
    n = case.steps
    scheduler.set_timesteps(n)
    timesteps = scheduler.timesteps
    if case.strength is None:
        latents = x["latents"] * scheduler.init_noise_sigma
    else:
        init_timestep = min(int(n * case.strength), n)
        t_start = max(n - init_timestep, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        init = x["init"]
        noise = randn_tensor(init.shape, generator=generator, device=init.device, dtype=init.dtype)
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))
    for t in timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        model_output = stand_in(model_input, t, scheduler.config.num_train_timesteps)
        latents = scheduler.step(model_output, t, latents, **kwargs).prev_sample
    return latents, timesteps


def run_ours(case, folder):
    folder.mkdir()
    args = [built_binary("sdtune_scheduler_loop"), "--scheduler", case.name, "--steps", case.steps, "--seed", case.seed]
    if case.raw_json:
        (folder / "scheduler_config.json").write_text(json.dumps(case.raw_json))
    else:
        # Without --karras's effect: the flag has to turn Karras sigmas on by itself.
        CLASSES[case.name](**case.config).save_config(folder)
    save_file(inputs(case), folder / "in.safetensors")
    args += ["--config", folder / "scheduler_config.json", "--inputs", folder / "in.safetensors"]
    args += ["--out", folder / "out.safetensors"]
    if case.karras:
        args.append("--karras")
    if case.eta is not None:
        args += ["--eta", case.eta]
    if case.strength is not None:
        args += ["--strength", case.strength]
    return args


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """Runs sdtune_scheduler_loop for every case at once (the processes in parallel) and returns
    {case id: output tensors, or the error text}."""
    root = tmp_path_factory.mktemp("schedulers")
    commands = {case.id: run_ours(case, root / f"case{i}") for i, case in enumerate(CASES)}

    def run(item):
        case_id, args = item
        proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
        if proc.returncode != 0:
            return case_id, f"exit {proc.returncode}: {proc.stderr}"
        return case_id, load_file(Path(args[args.index("--out") + 1]))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(run, commands.items()))


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_scheduler_matches_diffusers(ours, case):
    result = ours[case.id]
    assert not isinstance(result, str), result
    latents, timesteps = reference(case)
    assert torch.equal(result["timesteps"], timesteps.double()), (result["timesteps"], timesteps)
    check(case.component, result["latents"], latents, tolerance=TOLERANCE)


@pytest.mark.parametrize(
    "name,config,message",
    [
        ("pndm", dict(SD, skip_prk_steps=False), "skip_prk_steps"),
        ("dpmpp-2m", dict(SD, solver_order=3), "solver_order"),
        ("dpmpp-2m", dict(SD, algorithm_type="sde-dpmsolver++"), "algorithm_type"),
        ("dpmpp-2m", dict(SD, solver_type="heun"), "solver_type"),
        ("euler", dict(SD, use_exponential_sigmas=True), "exponential"),
    ],
)
def test_unsupported_configurations_are_errors(tmp_path, name, config, message):
    CLASSES[name](**config).save_config(tmp_path)
    save_file({"latents": torch.zeros(SHAPE)}, tmp_path / "in.safetensors")
    args = ["--config", tmp_path / "scheduler_config.json", "--scheduler", name, "--steps", 10, "--seed", 0]
    args += ["--inputs", tmp_path / "in.safetensors", "--out", tmp_path / "out.safetensors"]
    proc = subprocess.run([str(built_binary("sdtune_scheduler_loop")), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
