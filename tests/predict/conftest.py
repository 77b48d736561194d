import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The predict tests work on matrices of at most ~100 x 100 and run thousands of tiny steps; intra-op threads
    only add synchronization to those, which on a loaded 2-core machine made the suite ~6x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
