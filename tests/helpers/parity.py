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
