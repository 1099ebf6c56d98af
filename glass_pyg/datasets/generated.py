r"""Base of the generated pair datasets: in memory or one processed file, written atomically."""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import Callable

from torch_geometric.data import InMemoryDataset

from .pair_data import PairData


class GeneratedPairDataset(InMemoryDataset):
    r"""An :class:`~torch_geometric.data.InMemoryDataset` of :class:`PairData` drawn by ``_pairs()``.

    ``root=None`` keeps everything in memory; otherwise the pairs are saved
    once to ``processed/<processed_file_names[0]>`` through a temporary file
    and a rename, so an interrupted run never leaves half a file, and later
    instances with the same parameters load it (``weights_only=True``).
    Subclasses set their parameters before calling ``super().__init__``.
    """

    def __init__(self, root: str | None, transform: Callable | None, pre_transform: Callable | None,
                 force_reload: bool) -> None:
        self._in_memory = root is None
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        if self._in_memory:
            self.data, self.slices = self.collate(self._transformed())
        else:
            self.load(self.processed_paths[0], PairData)

    def _pairs(self) -> list[PairData]:
        raise NotImplementedError

    def _transformed(self) -> list[PairData]:
        out = self._pairs()
        return [self.pre_transform(d) for d in out] if self.pre_transform is not None else out

    @property
    def raw_file_names(self) -> list[str]:
        return []

    def download(self) -> None:  # generated, nothing to download
        pass

    def _process(self) -> None:
        if not self._in_memory:  # in memory: generated in __init__, nothing on disk
            super()._process()

    def process(self) -> None:
        path = self.processed_paths[0]
        fd, tmp = tempfile.mkstemp(dir=osp.dirname(path), suffix=".tmp")
        os.close(fd)
        try:
            self.save(self._transformed(), tmp)
            os.replace(tmp, path)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
