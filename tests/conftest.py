"""Shared test setup: offline, headless, and a small phantom run prepared once per session."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run of the smoke profile shrunk further, with stage 01 done (shared, do not modify)."""
    from polyplib.data.prepare import prepare_data
    from polyplib.runs import open_run

    run = open_run("smoke", ["data.phantom.n_source=40", "data.phantom.n_target=12",
                             "data.split.n_train=24", "data.split.n_test=10", "data.resolution=32",
                             "run.progress=false"], tmp_path_factory.mktemp("tiny-run"))
    prepare_data(run)
    return run
