"""Shared test setup: offline, headless, and a small phantom run prepared once per session."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run of the smoke profile shrunk further, with stage 01 done (shared, do not modify)."""
    from polyplib.data.stage import run_stage as prepare_data
    from polyplib.runs import open_run

    run = open_run("smoke", ["data.phantom.n_source=40", "data.phantom.n_target=12",
                             "data.split.n_train=24", "data.split.n_test=10", "data.resolution=32",
                             "run.progress=false"], tmp_path_factory.mktemp("tiny-run"))
    prepare_data(run)
    return run


@pytest.fixture
def one_torch_thread():
    """Training on a shared 2-core machine: one torch thread is several times faster than two."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
