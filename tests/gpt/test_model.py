import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptdraw.gpt.config import ModelConfig
from gptdraw.gpt.model import adapt_pretrained_gpt2, attention_mask, build_model, check_model_fits_layout, sequence_loss
from gptdraw.sequence import SequenceLayout


def random_ids(layout, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(0, layout.text_vocab_size, (batch, layout.text_len), generator=generator)
    codes = torch.randint(0, layout.codebook_size, (batch, layout.image_len), generator=generator)
    return layout.pack(captions, codes)


def test_joint_loss_matches_plain_cross_entropy_over_the_whole_vocabulary(gpt, layout):
    ids = random_ids(layout)
    ids[:, layout.text_len - 3 : layout.text_len] = layout.pad_id
    ours = sequence_loss(gpt, ids, layout, chunk=7, vocabulary="joint")
    logits = gpt(ids).logits[:, :-1].float()
    targets = ids[:, 1:].clone()
    text_targets = targets[:, : layout.text_len - 1]
    text_targets[text_targets == layout.pad_id] = -100
    ce = torch.nn.functional.cross_entropy
    text = ce(logits[:, : layout.text_len - 1].reshape(-1, logits.shape[-1]), text_targets.reshape(-1))
    image = ce(logits[:, layout.text_len - 1 :].reshape(-1, logits.shape[-1]), targets[:, layout.text_len - 1 :].reshape(-1))
    assert torch.allclose(ours.text_loss, text, atol=1e-5)
    assert torch.allclose(ours.image_loss, image, atol=1e-5)
    weighted = sequence_loss(gpt, ids, layout, text_weight=1, image_weight=7, chunk=7, vocabulary="joint")
    assert torch.allclose(weighted.loss, (text + 7 * image) / 8, atol=1e-5)


def test_per_modality_loss_normalises_captions_over_caption_ids_and_images_over_codes(gpt, layout):
    ids = random_ids(layout)
    ids[:, layout.text_len - 3 : layout.text_len] = layout.pad_id
    ours = sequence_loss(gpt, ids, layout, chunk=7)
    logits = gpt(ids).logits[:, :-1].float()
    targets = ids[:, 1:].clone()
    text_targets = targets[:, : layout.text_len - 1]
    text_targets[text_targets == layout.pad_id] = -100
    ce = torch.nn.functional.cross_entropy
    text_logits = logits[:, : layout.text_len - 1, : layout.text_vocab_size]
    image_logits = logits[:, layout.text_len - 1 :, layout.image_offset : layout.image_offset + layout.codebook_size]
    text = ce(text_logits.reshape(-1, layout.text_vocab_size), text_targets.reshape(-1))
    image = ce(image_logits.reshape(-1, layout.codebook_size), (targets[:, layout.text_len - 1 :] - layout.image_offset).reshape(-1))
    assert torch.allclose(ours.text_loss, text, atol=1e-5)
    assert torch.allclose(ours.image_loss, image, atol=1e-5)
    joint = sequence_loss(gpt, ids, layout, chunk=7, vocabulary="joint")
    assert ours.image_loss < joint.image_loss  # fewer classes to spread the probability over


def test_chunked_loss_gradients_equal_unchunked(layout):
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16), layout, seed=1)
    ids = random_ids(layout)
    grads = []
    for vocabulary in ("per-modality", "joint"):
        for chunk in (5, 100000):
            model.zero_grad()
            sequence_loss(model, ids, layout, chunk=chunk, vocabulary=vocabulary).loss.backward()
            grads.append(model.transformer.wte.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and torch.allclose(grads[2], grads[3], atol=1e-6)
    assert not torch.allclose(grads[0], grads[2], atol=1e-6)


def test_new_models_use_the_one_kernel_gelu(layout):
    assert build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16), layout).config.activation_function == "gelu_pytorch_tanh"


def test_layout_mismatch_is_refused(gpt, layout):
    other = SequenceLayout(text_vocab_size=layout.text_vocab_size, pad_id=layout.pad_id, codebook_size=layout.codebook_size + 200,
                           text_len=layout.text_len, grid=layout.grid)
    with pytest.raises(ValueError, match="vocabulary"):
        check_model_fits_layout(gpt, other, "test")
    longer = SequenceLayout(text_vocab_size=layout.text_vocab_size, pad_id=layout.pad_id, codebook_size=layout.codebook_size,
                            text_len=layout.text_len, grid=(layout.grid[0] * 2, layout.grid[1] * 2))
    with pytest.raises(ValueError, match="context"):
        check_model_fits_layout(gpt, longer, "test")


def test_adapt_pretrained_gpt2_keeps_text_rows_and_adds_image_rows(tmp_path):
    torch.manual_seed(0)
    pretrained = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    pretrained.save_pretrained(tmp_path / "gpt2")
    # GPT-2's 100 ids, plus the pad id the caption tokenizer appends; 64 codes; a longer context.
    layout = SequenceLayout(text_vocab_size=101, pad_id=100, codebook_size=64, text_len=8, grid=(4, 4))
    adapted = adapt_pretrained_gpt2(tmp_path / "gpt2", layout)
    assert adapted.config.vocab_size == layout.vocab_size
    assert adapted.config.n_positions >= layout.seq_len
    old = pretrained.transformer.wte.weight
    new = adapted.transformer.wte.weight
    assert torch.equal(new[:100], old)
    assert new.shape[0] == layout.vocab_size and not torch.equal(new[100:164], torch.zeros_like(new[100:164]))
    assert torch.equal(adapted.transformer.wpe.weight[:16], pretrained.transformer.wpe.weight)
    assert all(m.p == 0 for m in adapted.modules() if isinstance(m, torch.nn.Dropout))
    adapted(random_ids(layout, batch=2))  # runs at the full sequence length


def test_adapt_refuses_foreign_tokenizer(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "g")
    layout = SequenceLayout(text_vocab_size=50, pad_id=0, codebook_size=64, text_len=4, grid=(2, 2))
    with pytest.raises(ValueError, match="own tokenizer"):
        adapt_pretrained_gpt2(tmp_path / "g", layout)
    with pytest.raises(FileNotFoundError):
        adapt_pretrained_gpt2(tmp_path / "missing", layout)


def test_linear_cross_entropy_gradients_match_autograd():
    from gptdraw.gpt.model import LinearCrossEntropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::5] = -100
    ours = LinearCrossEntropy.apply(hidden, weight, targets, 8) * 0.5
    ours.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100, reduction="sum") * 0.5
    plain.backward()
    assert torch.allclose(ours, plain, atol=1e-4)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-5)
    assert torch.allclose(grads[1], weight.grad, atol=1e-5)


def test_linear_cross_entropy_with_a_frozen_head_gives_the_same_hidden_gradient_and_none_for_the_head():
    from gptdraw.gpt.model import LinearCrossEntropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    LinearCrossEntropy.apply(hidden, weight, targets, 8).backward()
    trained_head = hidden.grad.clone()
    hidden.grad = None
    frozen = weight.detach()  # as under LoRA: the tied head is frozen
    LinearCrossEntropy.apply(hidden, frozen, targets, 8).backward()
    assert torch.equal(hidden.grad, trained_head) and frozen.grad is None


@pytest.fixture(scope="module")
def prefix_gpt(layout):
    return build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, caption_attention="prefix"), layout, seed=0).eval()


def test_a_prefix_caption_attends_to_the_whole_caption_and_the_image_causally(prefix_gpt, gpt, layout):
    ids = random_ids(layout, batch=2)
    later_word = ids.clone()
    later_word[:, layout.text_len - 2] = (later_word[:, layout.text_len - 2] + 1) % layout.text_vocab_size
    later_code = ids.clone()
    later_code[:, -1] = layout.image_offset + (later_code[:, -1] - layout.image_offset + 1) % layout.codebook_size

    def hidden(model, sequence):
        with torch.no_grad():
            mask = attention_mask(model, layout, sequence[:, : layout.text_len], sequence.shape[1])
            return model.transformer(input_ids=sequence, attention_mask=mask).last_hidden_state

    # Under the prefix mask the first caption position sees a later word; causally it does not.
    assert not torch.allclose(hidden(prefix_gpt, ids)[:, 0], hidden(prefix_gpt, later_word)[:, 0])
    assert torch.allclose(hidden(gpt, ids)[:, 0], hidden(gpt, later_word)[:, 0])
    # Every position before the last code is blind to it under both.
    assert torch.allclose(hidden(prefix_gpt, ids)[:, :-1], hidden(prefix_gpt, later_code)[:, :-1])
    assert attention_mask(gpt, layout, ids[:, : layout.text_len], 5) is None  # a causal GPT leaves the mask to transformers


def test_masked_pads_are_seen_by_no_later_position(gpt, layout):
    # Moving the pad id's embedding changes what an attending GPT computes at the image positions, and
    # nothing there under mask_pads; the pad before the first code still reads the words before it.
    masked = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, mask_pads=True), layout, seed=0).eval()
    ids = random_ids(layout, batch=2)
    ids[:, 3 : layout.text_len] = layout.pad_id  # three words, then pads
    other_word = ids.clone()
    other_word[:, 1] = (other_word[:, 1] + 1) % layout.text_vocab_size

    shift = torch.randn(32, generator=torch.Generator().manual_seed(5))  # not constant: layer norm would undo that

    def hidden(model, sequence, pad_shift=0.0):
        with torch.no_grad():
            wte = model.transformer.wte.weight
            saved = wte[layout.pad_id].clone()
            wte[layout.pad_id] += pad_shift * shift
            mask = attention_mask(model, layout, sequence[:, : layout.text_len], sequence.shape[1])
            out = model.transformer(input_ids=sequence, attention_mask=mask).last_hidden_state
            wte[layout.pad_id] = saved
            return out

    images = slice(layout.text_len, None)
    assert torch.allclose(hidden(masked, ids)[:, images], hidden(masked, ids, pad_shift=1.0)[:, images], atol=1e-6)
    assert not torch.allclose(hidden(gpt, ids)[:, images], hidden(gpt, ids, pad_shift=1.0)[:, images], atol=1e-4)
    last_pad = layout.text_len - 1
    assert not torch.allclose(hidden(masked, ids)[:, last_pad], hidden(masked, other_word)[:, last_pad])
    # A blank caption (guidance's row) is all pads: every position still has itself to attend.
    blank = ids.clone()
    blank[:, : layout.text_len] = layout.pad_id
    assert torch.isfinite(hidden(masked, blank)).all()


def test_the_caption_attention_is_saved_with_the_gpt_and_a_foreign_one_refused(prefix_gpt, tmp_path):
    import json

    from gptdraw.gpt.model import caption_attention, load_transformer, save_transformer

    save_transformer(prefix_gpt, tmp_path / "gpt")
    loaded = load_transformer(tmp_path / "gpt")
    assert caption_attention(loaded) == "prefix"
    assert torch.equal(loaded.transformer.wte.weight, prefix_gpt.transformer.wte.weight)
    config = json.loads((tmp_path / "gpt" / "config.json").read_text())
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({**config, "gptdraw_caption_attention": "sideways"}))
    with pytest.raises(ValueError, match="gptdraw_caption_attention must be one of causal, prefix"):
        load_transformer(tmp_path / "gpt")
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({**config, "gptdraw_mask_pads": "yes"}))
    with pytest.raises(ValueError, match="gptdraw_mask_pads must be true or false"):
        load_transformer(tmp_path / "gpt")


def test_masked_pads_are_saved_with_the_gpt(layout, tmp_path):
    from gptdraw.gpt.model import load_transformer, masks_pads, save_transformer

    save_transformer(build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, mask_pads=True), layout), tmp_path / "gpt")
    assert masks_pads(load_transformer(tmp_path / "gpt"))
