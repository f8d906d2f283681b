"""Fixtures of the command-line tests: copies of the session's pipelines to break."""

import shutil

import pytest


@pytest.fixture
def copy_pipeline(pipeline, tmp_path):
    """copy_pipeline(kind="tiny") -> a private copy of the pipeline folder, free to damage."""

    def copy(kind="tiny"):
        src, _ = pipeline(kind)
        dst = tmp_path / f"copy_{kind}"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_tokenizer_src"))
        return dst

    return copy
