"""Shared benchmark setup: every suite runs with one torch thread (the speed and parity claims
in RESULTS.md assume it), restored afterwards."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
