import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests sketch hundreds of tiny batches; a multi-threaded FFT of a 6 x 8 tensor took 30 ms on the busy
    shared machine (thread start-up and spinning) against 4 μs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
