import numpy as np
import pytest

from gptdraw.captions import CaptionTokenizer


def test_fixed_length_padding_and_truncation(caption_tokenizer):
    encoded = caption_tokenizer.encode_batch(["a red circle", "a large blue square on the right and a green circle in the center"])
    assert encoded.ids.shape == (2, caption_tokenizer.text_len)
    assert encoded.ids.dtype == np.int32
    assert encoded.truncated == [False, True]
    assert encoded.ids[0, -1] == caption_tokenizer.pad_id
    assert (encoded.ids[1] != caption_tokenizer.pad_id).all()


def test_normalisation_makes_case_irrelevant(caption_tokenizer):
    a = caption_tokenizer.encode_batch(["A Small RED circle"]).ids
    b = caption_tokenizer.encode_batch(["a small red circle"]).ids
    assert (a == b).all()
    assert caption_tokenizer.decode(b[0]).strip() == "a small red circle"


def test_blank_caption_is_all_pad(caption_tokenizer):
    blank = caption_tokenizer.blank(3)
    assert blank.shape == (3, caption_tokenizer.text_len)
    assert (blank == caption_tokenizer.pad_id).all()


def test_save_load_identical(caption_tokenizer, tmp_path):
    caption_tokenizer.save_pretrained(tmp_path / "tok")
    loaded = CaptionTokenizer.from_pretrained(tmp_path / "tok")
    captions = ["a purple square in the bottom right", "zebra!! émoji ☃", "a yellow circle"]
    assert (loaded.encode_batch(captions).ids == caption_tokenizer.encode_batch(captions).ids).all()
    assert loaded.identity() == caption_tokenizer.identity()


def test_load_missing_or_broken(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks"):
        CaptionTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "caption_tokenizer.json").write_text("not json")
    with pytest.raises(ValueError, match="not a valid caption tokenizer config"):
        CaptionTokenizer.from_pretrained(tmp_path)


def test_gpt2_tokenizer_from_directory(tmp_path):
    # A GPT-2 style directory (vocab.json + merges.txt) as the hub ships it, tiny.
    vocab = {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġa": 4, "<|endoftext|>": 5}
    import json

    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nĠ a\n")
    tokenizer = CaptionTokenizer.from_gpt2(str(tmp_path), text_len=4)
    assert tokenizer.pad_id == 6  # appended after GPT-2's own vocabulary
    assert tokenizer.encode_batch(["ab a"]).ids.tolist() == [[3, 4, 6, 6]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a GPT-2 tokenizer directory"):
        CaptionTokenizer.from_gpt2(str(tmp_path / "empty"), 4)


def test_text_that_is_not_valid_unicode_is_encoded_not_refused(caption_tokenizer):
    # A lone surrogate (what a broken web form can send) would make the BPE library raise TypeError.
    encoded = caption_tokenizer.encode_batch(["a red \ud800 circle", "a red ? circle"])
    assert (encoded.ids[0] == encoded.ids[1]).all()


def test_a_save_cut_short_by_a_full_disk_leaves_no_config_so_a_rerun_trains_again(caption_tokenizer, tmp_path,
                                                                                 monkeypatch):
    """bench/bad_inputs.py found it: a full disk left an empty caption_tokenizer.json, and the rerun
    of `data prepare` refused its own folder instead of training the tokenizer again."""
    import errno

    from gptdraw import captions, files
    from gptdraw.data.prepare import caption_tokenizer_for
    from gptdraw.data.sources import ShapesSource

    real_write = files.write_durable

    def full_disk(path, data):
        if str(path).split("/")[-1].startswith(f".{captions.CONFIG_NAME}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(files, "write_durable", full_disk)
    with pytest.raises(OSError, match="No space left"):
        caption_tokenizer.save_pretrained(tmp_path / "data" / "text_tokenizer")
    assert not (tmp_path / "data" / "text_tokenizer" / captions.CONFIG_NAME).exists()
    monkeypatch.setattr(files, "write_durable", real_write)  # space freed
    again = caption_tokenizer_for(ShapesSource(32, 32, seed=0), tmp_path / "data")
    assert (tmp_path / "data" / "text_tokenizer" / captions.CONFIG_NAME).is_file() and again.vocab_size > 0


def test_caption_parts_are_the_ids_each_part_encodes_to_on_its_own(caption_tokenizer):
    from gptdraw.captions import caption_parts

    separator = caption_tokenizer.part_separator_id
    assert separator is not None and caption_tokenizer.decode([separator]) == ","
    row = caption_tokenizer.encode_batch(["red circle, left, small"]).ids[0]
    parts = caption_parts(row, separator, caption_tokenizer.pad_id)
    alone = caption_tokenizer.encode_batch(["red circle", "left", "small"]).ids
    assert parts == [[int(i) for i in ids if i != caption_tokenizer.pad_id] for ids in alone]
    # One part, and empty parts (",," or a trailing comma), give only the parts that hold ids.
    assert caption_parts(caption_tokenizer.encode_batch(["red circle"]).ids[0], separator,
                         caption_tokenizer.pad_id) == [parts[0]]
    assert caption_parts([5, separator, separator, 6, separator], separator, caption_tokenizer.pad_id) == [[5], [6]]
