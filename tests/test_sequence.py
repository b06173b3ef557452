import pytest
import torch

from gptdraw.sequence import SequenceLayout


def test_reference_layout():
    layout = SequenceLayout(text_vocab_size=50258, pad_id=50257, codebook_size=16384, text_len=64, grid=(16, 16))
    assert layout.seq_len == 320
    assert layout.vocab_size % 128 == 0 and layout.vocab_size >= 50258 + 16384
    assert layout.image_offset == 50258


def test_f8_grid_follows_tokenizer():
    layout = SequenceLayout(text_vocab_size=1000, pad_id=0, codebook_size=16384, text_len=64, grid=(32, 32))
    assert layout.image_len == 1024 and layout.seq_len == 1088


def test_pack_unpack_round_trip(layout):
    captions = torch.randint(0, layout.text_vocab_size, (2, layout.text_len))
    codes = torch.randint(0, layout.codebook_size, (2, *layout.grid))
    ids = layout.pack(captions, codes)
    assert ids.shape == (2, layout.seq_len)
    assert (ids[:, layout.text_len :] >= layout.image_offset).all()
    back_captions, back_codes = layout.unpack(ids)
    assert torch.equal(back_captions, captions) and torch.equal(back_codes, codes)
    assert SequenceLayout.from_dict(layout.to_dict()) == layout


def test_pack_rejects_wrong_lengths(layout):
    with pytest.raises(ValueError, match="expected captions"):
        layout.pack(torch.zeros(1, layout.text_len + 1, dtype=torch.long), torch.zeros(1, *layout.grid, dtype=torch.long))
