"""The image tokenizer: encode/decode contracts, save/load, strict loading, presets."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gptdraw.images import make_grid, pil_to_tensor, tensor_to_pil
from gptdraw.vq.model import (
    ImageTokenizer,
    VQConfig,
    load_state_dict_strict,
    vq_preset,
)


def tiny_config(**overrides) -> VQConfig:
    settings = dict(
        image_size=16,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=4,
        vq_embed_dim=4,
        num_vq_embeddings=32,
        norm_num_groups=4,
    )
    return VQConfig(**{**settings, **overrides})


@pytest.fixture
def tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(tiny_config()).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_encode_decode_shapes_and_dtypes(tokenizer, images):
    codes = tokenizer.encode(images)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.int64
    assert tokenizer.grid_size() == (8, 8) and tokenizer.downsample_factor == 2
    assert int(codes.min()) >= 0 and int(codes.max()) < tokenizer.codebook_size
    decoded = tokenizer.decode(codes)
    assert decoded.shape == (3, 3, 16, 16) and decoded.dtype == torch.float32
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0
    # Other sizes than the default work too, and codes are per-image (batching changes nothing).
    assert tokenizer.encode(torch.rand(1, 3, 8, 12)).shape == (1, 4, 6)
    assert torch.equal(tokenizer.encode(images[1:2]), codes[1:2])


def test_nearest_codes_match_brute_force(tokenizer):
    latents = torch.randn(2, 4, 3, 5)
    distances = torch.cdist(latents.permute(0, 2, 3, 1).reshape(-1, 4), tokenizer.codebook)  # (30, K)
    assert torch.equal(tokenizer.nearest_codes(latents).reshape(-1), distances.argmin(dim=1))


def test_l2_codes_are_matched_by_cosine_and_decoded_at_unit_length(images):
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(tiny_config(code_norm="l2")).eval()
    latents = torch.randn(2, 4, 3, 5)
    cosine = F.normalize(latents.permute(0, 2, 3, 1).reshape(-1, 4), dim=1) @ F.normalize(tokenizer.codebook, dim=1).t()
    assert torch.equal(tokenizer.nearest_codes(latents).reshape(-1), cosine.argmax(dim=1))
    # A plain tokenizer with the same weights matches by distance, which a row's length changes.
    plain = ImageTokenizer(tiny_config()).eval()
    plain.load_state_dict(tokenizer.state_dict())
    assert not torch.equal(plain.nearest_codes(latents), tokenizer.nearest_codes(latents))
    codes, decoded = tokenizer.encode(images), tokenizer.decode(tokenizer.encode(images))
    with torch.no_grad():
        tokenizer.codebook.mul_(torch.rand(tokenizer.codebook_size, 1) * 3 + 0.1)  # every row a new length
    # Only the rows' directions count, on both sides.
    assert torch.equal(tokenizer.encode(images), codes)
    assert torch.allclose(tokenizer.decode(codes), decoded, atol=1e-5)
    assert torch.allclose(tokenizer(images).latents.norm(dim=1), torch.ones(3, 8, 8), atol=1e-5)
    with pytest.raises(ValueError, match="code_norm must be one of \\('none', 'l2'\\), got 'l1'"):
        tiny_config(code_norm="l1")


def test_encode_decode_under_bf16_autocast_and_channels_last(tokenizer, images):
    codes = tokenizer.encode(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes_bf16 = tokenizer.encode(images.contiguous(memory_format=torch.channels_last))
        decoded_bf16 = tokenizer.decode(codes)
    assert codes_bf16.dtype == torch.int64 and codes_bf16.shape == codes.shape
    assert decoded_bf16.dtype == torch.float32
    assert (decoded_bf16 - tokenizer.decode(codes)).abs().max() < 0.1


def test_spatial_norm_tokenizer_round_trips(images):
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(tiny_config(norm_type="spatial", block_out_channels=(32, 32), norm_num_groups=8)).eval()
    codes = tokenizer.encode(images)
    assert tokenizer.decode(codes).shape == images.shape
    # MoVQ's decoder is conditioned on the codes themselves, not only on post_quant_conv.
    assert any("conv_y" in key for key in tokenizer.model.state_dict())


def test_save_load_gives_identical_codes_and_images(tokenizer, images, tmp_path):
    tokenizer.save_pretrained(tmp_path / "vq")
    document = json.loads((tmp_path / "vq" / "config.json").read_text())
    assert document["format"] == "gptdraw-vq" and document["version"] == 1
    loaded = ImageTokenizer.from_pretrained(tmp_path / "vq")
    assert loaded.config == tokenizer.config and not loaded.training
    codes = tokenizer.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), tokenizer.decode(codes))
    assert ImageTokenizer.from_pretrained(tmp_path / "vq", dtype=torch.bfloat16).codebook.dtype == torch.bfloat16


def test_from_pretrained_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory not found"):
        ImageTokenizer.from_pretrained(tmp_path / "nowhere")


def test_from_pretrained_missing_or_invalid_config(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        ImageTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ImageTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a gptdraw-vq config"):
        ImageTokenizer.from_pretrained(tmp_path)
    bad = {"format": "gptdraw-vq", "version": 1, "config": {**tiny_config().to_dict(), "colour": 3}}
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown VQConfig fields: colour"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_from_pretrained_missing_weights(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights not found"):
        ImageTokenizer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        ImageTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ("drop", "1 missing keys (encoder.conv_in.bias)"),
        ("extra", "1 unexpected keys (loss.discriminator.weight)"),
        ("shape", "1 shape mismatches (quantize.embedding.weight: checkpoint (31, 4) vs model (32, 4))"),
    ],
)
def test_from_pretrained_rejects_weights_that_do_not_fit(tokenizer, tmp_path, change, message):
    tokenizer.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    if change == "drop":
        del weights["encoder.conv_in.bias"]
    elif change == "extra":
        weights["loss.discriminator.weight"] = torch.zeros(2)
    else:
        weights["quantize.embedding.weight"] = weights["quantize.embedding.weight"][:31].contiguous()
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as error:
        ImageTokenizer.from_pretrained(tmp_path)
    assert message in str(error.value) and "model.safetensors" in str(error.value)


def test_load_state_dict_strict_counts_and_truncates(tokenizer):
    state = {f"extra.{index}": torch.zeros(1) for index in range(7)}
    with pytest.raises(ValueError) as error:
        load_state_dict_strict(tokenizer.model, state, source="ckpt.bin")
    text = str(error.value)
    assert "ckpt.bin" in text and "7 unexpected keys" in text and "extra.4, ..." in text
    assert f"{len(tokenizer.model.state_dict())} missing keys" in text


def test_decode_rejects_bad_codes(tokenizer):
    with pytest.raises(ValueError, match=r"codes must be in \[0, 32\) for this codebook, got values in \[32, 32\]"):
        tokenizer.decode(torch.full((1, 2, 2), 32))
    with pytest.raises(ValueError, match=r"got values in \[-1, 0\]"):
        tokenizer.decode(torch.tensor([[[0, -1]]]))
    with pytest.raises(ValueError, match="integer tensor"):
        tokenizer.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"shape \(B, h, w\)"):
        tokenizer.decode(torch.zeros(4, dtype=torch.long))


def test_encode_rejects_bad_images(tokenizer):
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\), got \(3, 16, 16\)"):
        tokenizer.encode(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\), got \(1, 4, 16, 16\)"):
        tokenizer.encode(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of the downsample factor 2, got 15x16"):
        tokenizer.encode(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        tokenizer.encode(torch.rand(1, 3, 16, 16) * 255)
    with pytest.raises(ValueError, match="float tensor"):
        tokenizer.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_config_checks_and_presets():
    with pytest.raises(ValueError, match="known presets: emoji-f4, emoji-f8, shapes-f4, shapes-f8, taming-f16-16384"):
        vq_preset("nope")
    with pytest.raises(ValueError, match="down_block_types has 1"):
        tiny_config(down_block_types=("DownEncoderBlock2D",))
    with pytest.raises(ValueError, match="multiple of norm_num_groups"):
        tiny_config(block_out_channels=(8, 18))
    with pytest.raises(ValueError, match="norm_type"):
        tiny_config(norm_type="batch")
    with pytest.raises(ValueError, match="'spatial' needs block_out_channels that are multiples of 32"):
        tiny_config(norm_type="spatial")
    with pytest.raises(ValueError, match="multiple of the downsample factor"):
        vq_preset("shapes-f8", image_size=44)
    shapes = vq_preset("shapes-f8")
    assert shapes.downsample_factor == 8 and shapes.grid_size() == (6, 6)
    assert vq_preset("shapes-f8", image_size=64).grid_size() == (8, 8)
    assert VQConfig.from_dict(json.loads(json.dumps(shapes.to_dict()))) == shapes


def taming_f16_16384_parameter_count() -> tuple[int, int, int]:
    """(encoder, decoder, total) parameters of taming's VQModel, counted from its architecture.

    taming-transformers vqgan_imagenet_f16_16384: ch 128, ch_mult (1, 1, 2, 2, 4), two
    ResnetBlocks per level (three in the decoder), AttnBlocks at resolution 16 (the last
    level) and in the middle, z_channels = embed_dim = 256, 16384 codes, 1×1 quant convs.
    """
    ch, mult, blocks, z, codes = 128, (1, 1, 2, 2, 4), 2, 256, 16384

    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    def norm(c):
        return 2 * c

    def resnet(cin, cout):
        return norm(cin) + conv(cin, cout, 3) + norm(cout) + conv(cout, cout, 3) + (conv(cin, cout, 1) if cin != cout else 0)

    def attention(c):
        return norm(c) + 4 * conv(c, c, 1)  # q, k, v, proj_out

    last = len(mult) - 1
    encoder, cin = conv(3, ch, 3), ch
    for level, m in enumerate(mult):
        for _ in range(blocks):
            encoder += resnet(cin, ch * m) + (attention(ch * m) if level == last else 0)
            cin = ch * m
        encoder += conv(cin, cin, 3) if level != last else 0  # downsample
    encoder += 2 * resnet(cin, cin) + attention(cin) + norm(cin) + conv(cin, z, 3)

    decoder = conv(z, cin, 3) + 2 * resnet(cin, cin) + attention(cin)
    for level in reversed(range(len(mult))):
        for _ in range(blocks + 1):
            decoder += resnet(cin, ch * mult[level]) + (attention(ch * mult[level]) if level == last else 0)
            cin = ch * mult[level]
        decoder += conv(cin, cin, 3) if level != 0 else 0  # upsample
    decoder += norm(cin) + conv(cin, 3, 3)
    return encoder, decoder, encoder + decoder + 2 * conv(z, z, 1) + codes * z


def test_taming_preset_matches_the_reference_architecture():
    config = vq_preset("taming-f16-16384")
    assert config.image_size == 256 and config.grid_size() == (16, 16) and config.input_range == (-1.0, 1.0)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = ImageTokenizer(config).model
    encoder, decoder, total = taming_f16_16384_parameter_count()
    assert (encoder, decoder, total) == (29_298_176, 42_449_795, 76_073_859)
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    assert sum(p.numel() for p in model.parameters()) == total

    state = model.state_dict()
    # diffusers' layout, which the taming → diffusers key map in DESIGN.md targets.
    expected_shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down_blocks.0.downsamplers.0.conv.weight": (128, 128, 3, 3),
        "encoder.down_blocks.2.resnets.0.conv_shortcut.weight": (256, 128, 1, 1),
        "encoder.down_blocks.4.attentions.1.to_q.weight": (512, 512),
        "encoder.mid_block.attentions.0.group_norm.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.embedding.weight": (16384, 256),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.up_blocks.0.attentions.2.to_out.0.weight": (512, 512),
        "decoder.up_blocks.0.upsamplers.0.conv.weight": (512, 512, 3, 3),
        "decoder.up_blocks.4.resnets.2.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_norm_out.weight": (128,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith(f"decoder.up_blocks.{i}.attentions") for key in state for i in range(1, 5))
    assert "decoder.up_blocks.4.upsamplers.0.conv.weight" not in state


def test_image_helpers_round_trip():
    from PIL import Image

    picture = Image.new("RGB", (40, 20), (255, 0, 0))
    picture.paste((0, 0, 255), (30, 0, 40, 20))
    tensor = pil_to_tensor([picture, picture.convert("L")], size=16)
    assert tensor.shape == (2, 3, 16, 16) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[0, :, 8, 8], torch.tensor([1.0, 0.0, 0.0]))  # centre crop keeps the red middle
    assert torch.allclose(tensor[1, 0], tensor[1, 1])  # greyscale became RGB
    back = tensor_to_pil(tensor * 2 - 0.5)  # out-of-range values are clamped
    assert back[0].size == (16, 16) and back[0].getpixel((8, 8)) == (255, 0, 0)
    with pytest.raises(ValueError, match="pass size="):
        pil_to_tensor([picture, picture.resize((20, 20))])
    grid = make_grid(back, columns=2, labels=["a long label that wraps onto two lines", "b"])
    assert grid.width == 2 + 2 * (16 + 2) and grid.height > 16 + 4
