import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The experiment tests train small networks (widths up to 256, tens of points) for hundreds of tiny steps;
    intra-op threads only add synchronization to those, which on a loaded 2-core machine made them several times
    slower. Module scope, so that it also covers the module-scoped result fixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
