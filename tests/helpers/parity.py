"""Parity measure and the record of the worst errors reached in this test run."""

import torch

# Worst max|sdtune - reference| / max|reference| per component; printed at the end of the run.
WORST = {}

TOLERANCE = 1e-4  # fp32 on CPU, from the foundation issue


def relative_error(ours, reference):
    assert ours.shape == reference.shape, (tuple(ours.shape), tuple(reference.shape))
    assert torch.isfinite(ours).all(), "non-finite values in sdtune's output"
    return ((ours.double() - reference.double()).abs().max() / reference.double().abs().max()).item()


def check(component, ours, reference, tolerance=TOLERANCE):
    """Asserts parity and records the error under `component`."""
    err = relative_error(ours, reference)
    WORST[component] = max(WORST.get(component, 0.0), err)
    assert err <= tolerance, f"{component}: relative error {err:.3e} > {tolerance:.0e}"
    return err


def assert_same_image(ours, reference):
    """Two uint8 images agree as the generation issues require: at most 1 level of 255 apart on
    >= 99.9% of pixels; and the reference has content (a blank image would match a blank one)."""
    import numpy as np

    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    diff = np.abs(ours.astype(int) - reference.astype(int))
    close = (diff <= 1).mean()
    assert close >= 0.999, f"only {close:.4%} of pixels within 1 level (max diff {diff.max()})"
    assert reference.std() > 5
