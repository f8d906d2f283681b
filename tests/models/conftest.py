"""Random pipelines saved once per session, and a helper that runs `sdtune forward` on them."""

import pytest
from safetensors.torch import load_file, save_file

from tiny_models import build_pipeline

_PIPELINES = {}


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """pipeline(kind) -> (folder, diffusers StableDiffusionPipeline), built on first use."""

    def get(kind):
        if kind not in _PIPELINES:
            folder = tmp_path_factory.mktemp(f"pipe_{kind}")
            _PIPELINES[kind] = (folder, build_pipeline(kind, folder))
        return _PIPELINES[kind]

    yield get
    _PIPELINES.clear()


@pytest.fixture
def forward(run_sdtune, tmp_path):
    """forward(folder, component, **inputs) -> dict of output tensors computed by sdtune."""

    def run(folder, component, **inputs):
        inp, out = tmp_path / f"{component}_in.safetensors", tmp_path / f"{component}_out.safetensors"
        save_file({k: v.contiguous() for k, v in inputs.items()}, inp)
        run_sdtune("forward", "--model", folder, "--component", component, "--inputs", inp, "--out", out)
        return load_file(out)

    return run

