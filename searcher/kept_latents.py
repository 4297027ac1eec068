"""The photos' kept latents as dedup's verification reads them: by row, in batches, held while they fit.

Verification reads each photo's latent many times: once for the index's mean cell, once for its own
templates, and once for every photo that lists it among its nearest or that it lists (~30 in all).
Read from the database each time, that was a third of dedup's time (15.9 of 43 s on the 2,893
Caltech test photos: a query per photo, the blobs decoded and widened to float32 every time). Here
each is read once, in batches, and held as float32 up to a memory budget, the least recently used
dropped first; an index whose latents fit (~12,000 photos at 16 x 20 cells in the default 512 MiB)
reads every latent once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from sqlalchemy.orm import Session

from indexer.storage.rows import read_latents
from searcher.searcher import Searcher

BUDGET_BYTES = 512 * 2**20
READ_BATCH = 1024  # photos' latents read by one query


class KeptLatents:
    """Rows' kept latents (row: the position of a photo's id in `ids`) as float32 tensors (C, H, W)."""

    def __init__(self, searcher: Searcher, ids: npt.NDArray[np.int64], budget_bytes: int = BUDGET_BYTES) -> None:
        self.searcher, self.ids, self.budget = searcher, ids, budget_bytes
        self._held: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, rows: Sequence[int]) -> dict[int, torch.Tensor]:
        """These rows' latents (a row whose photo has none is left out)."""
        found = {r: self._held[r] for r in rows if r in self._held}
        missing = [r for r in dict.fromkeys(rows) if r not in found]
        for start in range(0, len(missing), READ_BATCH):
            found.update(self._read(missing[start : start + READ_BATCH]))
        for r in found:
            self._held.move_to_end(r)
        while self._bytes > self.budget and len(self._held) > 1:
            _, dropped = self._held.popitem(last=False)
            self._bytes -= dropped.nbytes
        return found

    def templates(self, row: int) -> list[torch.Tensor]:
        """The row's verification templates, from its kept latent alone (`Embedder.latent_templates`):
        no file is read, so photos moved or deleted since indexing are verified like the rest."""
        return self.searcher.embedder.latent_templates(self.get([row])[row].numpy())

    def mean(self) -> torch.Tensor | None:
        """The mean latent cell (C,) over every photo's kept latent (read once here, and held as the
        budget allows); None when the model keeps no latents or a photo has none (nothing to verify
        against)."""
        if not self.searcher.embedder.keeps_latents:
            return None
        total, cells = None, 0
        for start in range(0, len(self.ids), READ_BATCH):
            rows = list(range(start, min(start + READ_BATCH, len(self.ids))))
            latents = self.get(rows)
            if len(latents) < len(rows):
                return None
            for latent in latents.values():
                flat = latent.flatten(1)
                total = flat.sum(1) if total is None else total + flat.sum(1)
                cells += flat.shape[1]
        return None if total is None else total / cells

    def _read(self, rows: list[int]) -> dict[int, torch.Tensor]:
        with Session(self.searcher.index.engine) as session:
            stored = read_latents(session, [int(self.ids[r]) for r in rows])
        read = {}
        for r in rows:
            latent = stored.get(int(self.ids[r]))
            if latent is not None:
                read[r] = self._held[r] = torch.from_numpy(latent.astype(np.float32))
                self._bytes += read[r].nbytes
        return read
