"""Decode workers fork with nothing of the parent's left to collect, and the parent's collector is left as it was."""

import gc

import torch
from torch.utils.data import DataLoader, TensorDataset

from indexer.workers import forked_cleanly


def test_every_item_comes_through_and_nothing_stays_frozen():
    data = TensorDataset(torch.arange(10))
    for workers in (0, 2):
        got = torch.cat([batch for (batch,) in forked_cleanly(DataLoader(data, batch_size=3, num_workers=workers))])
        assert got.tolist() == list(range(10)), workers
        assert gc.get_freeze_count() == 0  # unfrozen in the parent once the workers are forked
