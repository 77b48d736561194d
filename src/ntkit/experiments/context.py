"""What every experiment receives besides its configuration: seed, device, data set, progress bars."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from .. import data as ntdata
from ..data import Dataset

__all__ = ["RunContext", "run_config"]

T = TypeVar("T")


@dataclass
class RunContext:
    """The run-wide settings: ``seed``, ``device``, the data set (``dataset`` name, ``data_dir``, ``download``,
    ``verify``: check local files against the official MD5s),
    ``quick`` (the quick configuration is used) and ``progress`` (tqdm bars on stderr when it is a terminal)."""

    seed: int = 0
    device: str = "cpu"
    dataset: str = "digits"
    data_dir: Path | None = None
    download: bool = False
    verify: bool = True
    quick: bool = True
    progress: bool = False
    _cache: dict[Any, Dataset] = field(default_factory=dict, repr=False)

    def derive_seed(self, *parts: object) -> int:
        """A seed for one purpose (e.g. ``("E3", width, repeat)``), fixed by the run seed and the parts."""
        return zlib.crc32(repr((self.seed, *parts)).encode()) & 0x7FFFFFFF

    def load_data(
        self,
        *,
        task: str = "binary",
        n_train: int | None,
        n_test: int | None = None,
        dtype: torch.dtype = torch.float64,
        **options: Any,
    ) -> Dataset:
        """The run's data set, flattened, on ``device``: ``task="binary"`` selects the set's two-class pair
        (:data:`ntkit.data.BINARY_CLASSES`), ``"multiclass"`` keeps all classes; a regression set (circle) ignores
        ``task``. Inputs are standardised (global) and rescaled to norm √d unless ``options`` say otherwise.
        ``n_test=None`` keeps the whole test split. Loaded data sets are cached for the run."""
        opts: dict[str, Any] = {"standardize": "global", "normalize": "sqrt_dim", "flatten": True, **options}
        if task == "binary" and ntdata.binary_classes(self.dataset) is not None:
            opts.setdefault("classes", ntdata.binary_classes(self.dataset))
        if self.dataset in ntdata.FILE_DATASETS:
            opts.update(data_dir=self.data_dir, download=self.download, verify=self.verify)
        key = (task, n_train, n_test, dtype, tuple(sorted((k, repr(v)) for k, v in opts.items())))
        if key not in self._cache:
            self._cache[key] = ntdata.load(
                self.dataset, n_train=n_train, n_test=n_test, seed=self.seed, dtype=dtype, device=self.device, **opts
            )
        return self._cache[key]

    def binary_task(self, cfg: Any) -> tuple[Dataset, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two-class task of an experiment config (``cfg.n_train``, ``cfg.n_test``, ``cfg.dtype`` a torch dtype
        name): ``(data, x_train (N, d), targets (N, 1) of ±1, x_test (M, d))`` (regression targets for circle)."""
        data = self.load_data(task="binary", n_train=cfg.n_train, n_test=cfg.n_test, dtype=getattr(torch, cfg.dtype))
        return data, data.x_train, data.targets()[0], data.x_test

    def bar(self, iterable: Iterable[T], *, desc: str, total: int | None = None, leave: bool = False) -> Iterator[T]:
        """``iterable`` wrapped in a tqdm progress bar when ``progress`` is on and stderr is a terminal."""
        if not self.progress:
            yield from iterable
            return
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, disable=None)


def run_config(cfg: Any, data: Dataset) -> dict[str, Any]:
    """A result's ``config``: the fields of the configuration dataclass ``cfg`` and the data the experiment used
    (data set name, class pair or ``None``, the actual numbers of train and test points)."""
    return {
        **asdict(cfg),
        "dataset": data.name,
        "classes": data.info.get("classes"),
        "n_train": data.n_train,
        "n_test": data.n_test,
    }
