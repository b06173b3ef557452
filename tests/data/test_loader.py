"""The training reader: seeded epoch permutations, disjoint rank slices, exact resume, batch gathering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptdraw.data import shapes
from gptdraw.data.loader import EpochBatches
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import open_source
from gptdraw.captions import CaptionTokenizer
from gptdraw.vq.model import ImageTokenizer, vq_preset


def stream(batches, count):
    """The first `count` batches' indices, concatenated."""
    return np.concatenate([batch.indices for _, batch in zip(range(count), batches)])


def test_permutations_are_seeded_per_epoch():
    first, again = EpochBatches(100, 10, seed=3), EpochBatches(100, 10, seed=3)
    assert np.array_equal(first.permutation(0), again.permutation(0))
    assert np.array_equal(first.permutation(0), np.random.default_rng([3, 0]).permutation(100))
    assert not np.array_equal(first.permutation(0), first.permutation(1))
    assert not np.array_equal(first.permutation(0), EpochBatches(100, 10, seed=4).permutation(0))
    assert sorted(first.permutation(5).tolist()) == list(range(100))


def test_rank_slices_are_disjoint_and_cover_each_batch():
    world = 4
    loaders = [EpochBatches(103, 12, seed=0, rank=rank, world_size=world) for rank in range(world)]
    assert loaders[0].steps_per_epoch == 8  # 103 // 12: the partial batch is dropped
    seen = []
    for step in range(loaders[0].steps_per_epoch):
        slices = [loader.indices(epoch=1, step=step) for loader in loaders]
        assert all(len(part) == 3 for part in slices)
        assert np.array_equal(np.concatenate(slices), loaders[0].global_batch(1, step))
        seen.extend(np.concatenate(slices).tolist())
    assert len(seen) == len(set(seen)) == 96
    assert seen == loaders[0].permutation(1)[:96].tolist()


def test_batches_follow_epochs_and_resume_at_any_sample():
    loader = EpochBatches(50, 8, seed=1, rank=1, world_size=2)  # 6 steps, 48 samples an epoch
    batches = list(loader.batches(epochs=2))
    assert [(b.epoch, b.step) for b in batches] == [(e, s) for e in range(2) for s in range(6)]
    assert all(np.array_equal(b.indices, loader.indices(b.epoch, b.step)) for b in batches)
    # Resume where a run stopped, aligned (after 7 steps) or not (the batch size changed, say).
    full = stream(loader.batches(), 20)
    assert np.array_equal(stream(loader.batches(start_sample=7 * 8), 13), full[7 * 4:])
    global_full = stream(EpochBatches(50, 8, seed=1).batches(), 20)
    resumed = stream(EpochBatches(50, 8, seed=1).batches(start_sample=45), 8)
    assert np.array_equal(resumed, global_full[45:45 + 64])  # crosses the epoch boundary at 48
    assert next(EpochBatches(50, 8, seed=1).batches(start_sample=45)).epoch == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="multiple of world_size"):
        EpochBatches(100, 10, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochBatches(5, 10, seed=0)
    with pytest.raises(ValueError, match="rank"):
        EpochBatches(100, 10, seed=0, rank=2, world_size=2)


def test_get_batch_gathers_across_shards(tmp_path):
    torch.manual_seed(0)
    config = vq_preset(
        "shapes-f8", image_size=32, block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=8, vq_embed_dim=8, num_vq_embeddings=64, norm_num_groups=8,
    )
    source = open_source("shapes", count=10, image_size=32, seed=0)
    captions = [caption for _, caption in shapes.generate_examples(100, 32, seed=9, heldout=None)]
    prepare(source, tmp_path, PrepareConfig(shard_size=3, batch_size=4, workers=0),
            image_tokenizer=ImageTokenizer(config).eval(),
            caption_tokenizer=CaptionTokenizer.train(captions, 300, text_len=12), progress=False)
    dataset = ShardDataset(tmp_path)
    assert len(dataset) == 10 and len(dataset.manifest["shards"]) == 4
    indices = [9, 0, 4, 4, 3, 8, 1]  # every shard, out of order, one repeated
    caption_ids, codes = dataset.get_batch(indices)
    assert caption_ids.dtype == codes.dtype == torch.int64
    assert caption_ids.shape == (7, 12) and codes.shape == (7, 64)
    for row, index in enumerate(indices):
        assert np.array_equal(codes[row].numpy(), dataset.codes(index).reshape(-1))
        assert np.array_equal(caption_ids[row].numpy(), dataset.caption_ids(index))
    single_ids, single_codes = dataset[8]
    assert torch.equal(single_codes, codes[5]) and torch.equal(single_ids, caption_ids[5])
    with pytest.raises(IndexError):
        dataset.get_batch([10])
