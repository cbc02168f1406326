"""The trainer's tests run torch on one thread (and so do the `humove train` processes they start): the tiny models
gain nothing from a second thread on a 2-core machine, and on a busy one the spinning threads made a 14 s test take
three minutes."""

import os

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if variable is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = variable
