r"""Base of the generated pair datasets: in memory or one processed file, written atomically."""
from __future__ import annotations

import os
import os.path as osp
import warnings
from collections.abc import Callable

import torch
from torch_geometric.data import InMemoryDataset

from .._atomic import atomic_path
from .pair_data import PairData


class GeneratedPairDataset(InMemoryDataset):
    r"""An :class:`~torch_geometric.data.InMemoryDataset` of :class:`PairData` drawn by ``_pairs()``.

    ``root=None`` keeps everything in memory; otherwise the pairs are saved
    once to ``processed/<processed_file_names[0]>`` through a temporary file
    and a rename, so an interrupted run never leaves half a file, and later
    instances with the same parameters load it. Every file under ``root`` is
    read with ``torch.load(weights_only=True)`` (only tensors, containers and
    the :class:`PairData` class), never unpickled: a file that does not load
    that way is refused (the data file) or ignored with a warning (the record
    of the ``pre_transform``), so a dataset folder cannot run code.
    Subclasses set their parameters before calling ``super().__init__``.
    """

    def __init__(self, root: str | None, transform: Callable | None, pre_transform: Callable | None,
                 force_reload: bool) -> None:
        self._in_memory = root is None
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        if self._in_memory:
            self.data, self.slices = self.collate(self._transformed())
        else:
            self._load_processed(self.processed_paths[0])

    def _load_processed(self, path: str) -> None:
        try:
            with torch.serialization.safe_globals([PairData]):
                out = torch.load(path, weights_only=True)
        except Exception as e:  # truncated, foreign or unsafe: say how to rebuild it
            raise RuntimeError(f"the processed dataset file {path} cannot be read safely "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                               "pass force_reload=True to rebuild it") from None
        if not (isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[0], dict)):
            raise RuntimeError(f"the processed dataset file {path} does not hold a saved pair dataset; "
                               "pass force_reload=True to rebuild it")
        self.data, self.slices = PairData.from_dict(out[0]), out[1]

    def _pairs(self) -> list[PairData]:
        raise NotImplementedError

    def _transformed(self) -> list[PairData]:
        out = self._pairs()
        return [self.pre_transform(d) for d in out] if self.pre_transform is not None else out

    @property
    def raw_file_names(self) -> list[str]:
        """None: generated pairs have no raw files (nothing is downloaded)."""
        return []

    # no ``download``: PyG then skips its download step, which would create ``root/raw``
    # (``???/raw`` in the working folder when root is None)

    def _process(self) -> None:
        # PyG's version unpickles processed/pre_transform.pt (weights_only=False); this one reads it as a string
        if self._in_memory:  # generated in __init__, nothing on disk
            return
        record = osp.join(self.processed_dir, "pre_transform.pt")
        want = _transform_repr(self.pre_transform)
        if not self.force_reload and osp.exists(record):
            try:
                had = torch.load(record, weights_only=True)
            except Exception:
                had = None
            if had != want:
                warnings.warn(f"the pre_transform differs from the one recorded in {record} (or the record is "
                              "unreadable); pass force_reload=True to process the dataset again", stacklevel=3)
        if not self.force_reload and all(osp.exists(p) for p in self.processed_paths):
            return
        os.makedirs(self.processed_dir, exist_ok=True)
        self.process()
        _save_atomic(want, record)

    def process(self) -> None:
        """Generate the pairs and save them to the processed file (atomically)."""
        data, slices = self.collate(self._transformed())
        _save_atomic((data.to_dict(), slices), self.processed_paths[0])  # tensors only: loads weights_only


def _transform_repr(transform: Callable | None) -> str:
    """PyG's record of a transform: its ``repr`` without object addresses."""
    from torch_geometric.data.dataset import _repr
    return _repr(transform)


def _save_atomic(obj: object, path: str) -> None:
    """``torch.save`` through a temporary file in the same folder and a rename: never half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
