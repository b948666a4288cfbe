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


def pytest_collection_modifyitems(config, items):
    """Cases marked ``timing_only`` (sizes that check nothing the smallest case does not) are
    deselected, not skipped, when benchmarks are disabled, as in the test suite."""
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    if not disabled:
        return
    dropped = [item for item in items if item.get_closest_marker("timing_only")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("timing_only")]
