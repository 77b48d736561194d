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
