"""Every numeric flag of every command refuses NaN, infinities and values outside its range with a
one-line error that names the flag, exit code 1, before any work -- on the command line and in a
--config TOML file alike."""

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

COMMANDS = ["generate", "grid", "forward", "init", "train", "dreambooth", "train-vae"]


def numeric_flags(run_sdtune, command):
    """{flag: type} of the numeric options `sdtune COMMAND --help` lists (CLI11 prints the type)."""
    help_text = run_sdtune(*command.split(), "--help").stdout
    return {m[1].split(",")[0]: m[2] for m in re.finditer(r"^\s+(--[-a-z0-9,]+) (FLOAT|INT|UINT)\b", help_text, re.M)}


def test_help_lists_the_numeric_flags(run_sdtune):
    # The sweep below reads the flags from --help: if that format changed it would test nothing.
    flags = numeric_flags(run_sdtune, "train")
    assert flags["--learning-rate"] == "FLOAT" and flags["--max-steps"] == "INT" and flags["--seed"] == "UINT"
    assert len(flags) >= 30


def test_nan_is_refused_by_every_numeric_flag(run_sdtune, one_line_error):
    # Each flag once (dreambooth repeats train's); infinities take the same path (cases below).
    cases, seen = [], set()
    for command in COMMANDS:
        for flag, kind in numeric_flags(run_sdtune, command).items():
            if (flag, kind) not in seen:
                seen.add((flag, kind))
                cases.append((command, flag, "nan"))
    assert len(cases) > 40

    def run(case):
        command, flag, value = case
        return case, run_sdtune(command, f"{flag}={value}", check=False)

    with ThreadPoolExecutor(4) as pool:
        for (command, flag, value), proc in pool.map(run, cases):
            line = one_line_error(proc, f"{flag}: ")
            assert "must be a finite number" in line or "could not be converted" in line.lower(), (command, line)


@pytest.mark.parametrize("command, flag, value, message", [
    ("generate", "--steps", "0", "--steps: must be at least 1, got 0"),
    ("generate", "--guidance-scale", "nan", "--guidance-scale: must be a finite number, got nan"),
    ("generate", "--strength", "0", "--strength: must be positive, got 0"),
    ("generate", "--strength", "1.5", "--strength: must be at most 1, got 1.5"),
    ("generate", "--eta", "2", "--eta: must be in [0, 1], got 2"),
    ("generate", "--num-images", "0", "--num-images: must be at least 1, got 0"),
    ("generate", "--width", "0", "--width: must be at least 8, got 0"),
    ("generate", "--seed", "-1", "--seed: must be >= 0, got -1"),
    ("grid", "--clip-skip", "-1", "--clip-skip: must be >= 0, got -1"),
    ("train", "--learning-rate", "0", "--learning-rate: must be positive, got 0"),
    ("train", "--learning-rate", "-1e-4", "--learning-rate: must be positive, got -1e-4"),
    ("train", "--adam-beta1", "1", "--adam-beta1: must be in [0, 1), got 1"),
    ("train", "--adam-epsilon", "-1", "--adam-epsilon: must be >= 0, got -1"),
    ("train", "--ema-decay", "1.5", "--ema-decay: must be in [0, 1], got 1.5"),
    ("train", "--gradient-accumulation-steps", "0", "--gradient-accumulation-steps: must be at least 1, got 0"),
    ("train", "--max-grad-norm", "-1", "--max-grad-norm: must be >= 0, got -1"),
    ("train", "--snr-gamma", "0", "--snr-gamma: must be positive, got 0"),
    ("train", "--checkpointing-steps", "-5", "--checkpointing-steps: must be >= 0, got -5"),
    ("train", "--resolution", "0", "--resolution: must be at least 8, got 0"),
    ("train", "--max-steps", "1e999", "--max-steps: must be a finite number, got 1e999"),
    ("dreambooth", "--prior-loss-weight", "-0.5", "--prior-loss-weight: must be >= 0, got -0.5"),
    ("dreambooth", "--num-class-images", "0", "--num-class-images: must be at least 1, got 0"),
    ("train-vae", "--kl-weight", "inf", "--kl-weight: must be a finite number, got inf"),
])
def test_out_of_range_values_name_their_flag(run_sdtune, one_line_error, command, flag, value, message):
    one_line_error(run_sdtune(command, flag, value, check=False), message)


def test_a_toml_config_is_checked_like_the_command_line(run_sdtune, one_line_error, tmp_path):
    # TOML has nan and inf literals: they reach the same checks, and the error names file and key.
    for line, key, message in [
        ("learning_rate = nan", "learning_rate", "--learning-rate: must be a finite number"),
        ("adam_beta2 = 1.5", "adam_beta2", "--adam-beta2: must be in [0, 1), got 1.5"),
        ("max_train_steps = -3", "max_train_steps", "--max-steps: must be >= 0, got -3"),
        ("validation_guidance_scale = -inf", "validation_guidance_scale", "must be a finite number"),
    ]:
        config = tmp_path / f"{key}.toml"
        config.write_text(f'model = "m"\ndata = "d"\nout = "{tmp_path / "out"}"\n{line}\n')
        proc = run_sdtune("train", "--config", config, check=False)
        one_line_error(proc, str(config), f"'{key}'", message)
    assert not (tmp_path / "out").exists()


def test_a_lora_scale_must_be_finite(run_sdtune, one_line_error, pipeline, tmp_path):
    proc = run_sdtune("generate", "--model", pipeline("tiny")[0], "--prompt", "x", "--lora", "style.safetensors:nan",
                      "--out", tmp_path / "a.png", check=False)
    one_line_error(proc, "style.safetensors:nan", "the LoRA scale must be a finite number, got 'nan'")
    assert not (tmp_path / "a.png").exists()
