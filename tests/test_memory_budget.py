"""The default memory budget: a quarter of the memory Linux reports as available (MemAvailable, which counts
reclaimable page cache), so that writing files (a scale store's tiles) does not shrink it; free pages otherwise."""

import torch

from ntkit import _memory


def _meminfo(tmp_path, text):
    path = tmp_path / "meminfo"
    path.write_text(text)
    return str(path)


def test_budget_follows_mem_available(tmp_path, monkeypatch):
    """MemAvailable of 8 GiB gives a 2 GiB budget, whatever the free pages are (the page cache may hold the rest)."""
    monkeypatch.delenv("NTKIT_MEMORY_BUDGET", raising=False)
    text = "MemTotal:       25165824 kB\nMemFree:          102400 kB\nMemAvailable:    8388608 kB\n"
    monkeypatch.setattr(_memory, "MEMINFO_PATH", _meminfo(tmp_path, text))
    assert _memory.default_memory_budget("cpu") == 2 * 2**30


def test_without_mem_available_the_free_pages_decide(tmp_path, monkeypatch):
    monkeypatch.delenv("NTKIT_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(_memory, "MEMINFO_PATH", _meminfo(tmp_path, "MemTotal: 1024 kB\n"))
    monkeypatch.setattr(_memory.os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}[name])
    assert _memory.default_memory_budget(torch.device("cpu")) == 1000 * 4096 // 4


def test_small_needs_do_not_read_the_free_memory(monkeypatch):
    """A call that can use at most SMALL_BYTES gets that budget without asking the system (any larger budget would
    plan it the same); a larger need, an explicit budget and NTKIT_MEMORY_BUDGET are honoured as before."""
    monkeypatch.delenv("NTKIT_MEMORY_BUDGET", raising=False)
    reads = []
    monkeypatch.setattr(_memory, "_available_bytes", lambda device: reads.append(device) or 2**33)
    assert _memory.resolve_budget(None, "cpu", need=_memory.SMALL_BYTES) == _memory.SMALL_BYTES
    assert reads == []
    assert _memory.resolve_budget(None, "cpu", need=_memory.SMALL_BYTES + 1) == 2**31
    assert _memory.resolve_budget(None, "cpu") == 2**31
    assert len(reads) == 2
    assert _memory.resolve_budget(1000, "cpu", need=10) == 1000
    monkeypatch.setenv("NTKIT_MEMORY_BUDGET", "1K")
    assert _memory.resolve_budget(None, "cpu", need=10) == 1024
    assert len(reads) == 2


def test_small_kernel_reads_no_free_memory_and_a_large_one_does(monkeypatch):
    """End to end: a tiny empirical NTK never reads the free memory; one whose block would need more than
    SMALL_BYTES does, and a system reporting little free memory then makes it chunk (same kernel to round-off)."""
    import ntkit as nk

    monkeypatch.delenv("NTKIT_MEMORY_BUDGET", raising=False)
    model = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    reads = []
    monkeypatch.setattr(_memory, "_available_bytes", lambda device: reads.append(device) or 2**33)
    small = nk.empirical_ntk(model, x, method="jacobian")
    assert reads == []
    big_x = torch.randn(2000, 6, dtype=torch.float64)  # one block: 19 MB of Jacobians, 96 MB of pair products
    whole = nk.empirical_ntk(model, big_x, method="jacobian")
    assert len(reads) == 1
    monkeypatch.setattr(_memory, "_available_bytes", lambda device: 2**28)  # a 64 MiB budget: the result and chunks
    from ntkit.empirical.jacobian import JacobianMethod

    chunks = []
    real = JacobianMethod.features
    monkeypatch.setattr(JacobianMethod, "features", lambda self, x: chunks.append(len(x)) or real(self, x))
    chunked = nk.empirical_ntk(model, big_x, method="jacobian")
    assert len(chunks) > 1 and max(chunks) < 2000
    assert torch.allclose(chunked, whole, rtol=1e-12, atol=1e-12)
    assert torch.allclose(nk.empirical_ntk(model, x, method="jacobian", memory_budget="1G"), small, rtol=0, atol=0)
