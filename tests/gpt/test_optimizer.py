"""The optimisers: Muon with AdamW steps exactly as torch's two optimisers would, on the right
parameters, and its state round-trips through a state dict."""

import copy

import torch

from gptdraw.gpt.config import ModelConfig, TrainConfig
from gptdraw.gpt.model import build_model
from gptdraw.gpt.optimizer import MuonAdamW, make_optimizer
from gptdraw.sequence import SequenceLayout


def two_layers() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def take_steps(model, optimizers, steps: int = 4) -> None:
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        model(x).square().mean().backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()


def test_muon_adamw_steps_as_torch_muon_and_adamw_apart():
    ours, reference = two_layers(), two_layers()
    matrices = lambda m: [m[0].weight, m[2].weight]  # noqa: E731
    biases = lambda m: [m[0].bias, m[2].bias]  # noqa: E731
    optimizer = MuonAdamW([{"params": matrices(ours)}], [{"params": biases(ours)}], lr=0.02, betas=(0.9, 0.95))
    apart = [torch.optim.Muon(matrices(reference), lr=0.02, adjust_lr_fn="match_rms_adamw"),
             torch.optim.AdamW(biases(reference), lr=0.02, betas=(0.9, 0.95))]
    take_steps(ours, [optimizer])
    take_steps(reference, apart)
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert not torch.equal(ours[0].weight, two_layers()[0].weight)  # it did train


def test_muon_state_round_trips_through_a_state_dict():
    model = two_layers()
    make = lambda m: MuonAdamW([{"params": [m[0].weight, m[2].weight]}], [{"params": [m[0].bias, m[2].bias]}],  # noqa: E731
                               lr=0.02, betas=(0.9, 0.95))
    optimizer = make(model)
    take_steps(model, [optimizer], steps=2)
    copy_model = copy.deepcopy(model)
    restored = make(copy_model)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    # The inner optimisers see the restored state (momentum buffers, Adam moments) …
    assert restored.muon.state is restored.state and len(restored.state) == 4
    take_steps(model, [optimizer], steps=2)
    take_steps(copy_model, [restored], steps=2)
    # … so both continue alike; a lost momentum buffer would make them differ.
    for a, b in zip(model.parameters(), copy_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_muon_gets_the_block_matrices_and_adamw_the_rest():
    layout = SequenceLayout(text_vocab_size=32, pad_id=0, codebook_size=16, text_len=4, grid=(2, 2))
    gpt = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=16), layout, seed=0)
    optimizer = make_optimizer(gpt, TrainConfig(model=ModelConfig(n_layer=2, n_head=2, n_embd=16), optimizer="muon"))
    names = {id(p): name for name, p in gpt.named_parameters()}
    muon = {names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]}
    adamw = {names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]}
    assert muon and all(".h." in name and name.endswith("weight") for name in muon)
    assert "transformer.wte.weight" in adamw and "transformer.wpe.weight" in adamw
    assert not muon & adamw and len(muon | adamw) == len(names)


def test_batched_muon_steps_as_torch_muon_on_a_gpt_with_one_batch_per_shape(layout, monkeypatch):
    from gptdraw.gpt import optimizer as optimizers

    def block_matrices(model):
        return [p for name, p in model.named_parameters() if p.ndim == 2 and ".h." in f".{name}"]

    ours = build_model(ModelConfig(n_layer=3, n_head=2, n_embd=16), layout, seed=2)
    reference = copy.deepcopy(ours)
    batches = []
    original = optimizers.newton_schulz
    monkeypatch.setattr(optimizers, "newton_schulz", lambda x, *a: batches.append(x.shape) or original(x, *a))
    batched = optimizers.BatchedMuon(block_matrices(ours), lr=0.01, adjust_lr_fn="match_rms_adamw")
    plain = torch.optim.Muon(block_matrices(reference), lr=0.01, adjust_lr_fn="match_rms_adamw")
    ids = torch.randint(0, layout.text_vocab_size, (2, layout.seq_len), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for model, opt in ((ours, batched), (reference, plain)):
            model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    for mine, theirs in zip(block_matrices(ours), block_matrices(reference), strict=True):
        assert torch.equal(mine, theirs)
    # GPT-2's four matrix shapes per block (attention in/out, MLP in/out), three blocks each: one
    # batch of three per shape and step, not twelve separate orthogonalisations.
    assert len(batches) == 3 * 4 and all(shape[0] == 3 for shape in batches)
    assert batched.state_dict()["state"][0].keys() == plain.state_dict()["state"][0].keys() == {"momentum_buffer"}


def test_newton_schulz_in_fp32_is_bf16s_orthogonalisation_more_exactly():
    from gptdraw.gpt.optimizer import newton_schulz

    generator = torch.Generator().manual_seed(0)
    for shape in ((3, 8, 24), (3, 24, 8)):  # wide, and tall (orthogonalised through its transpose)
        updates = torch.randn(*shape, generator=generator)
        fp32, bf16 = newton_schulz(updates, dtype=torch.float32), newton_schulz(updates)
        assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16 and fp32.shape == updates.shape
        assert torch.allclose(fp32, bf16.float(), atol=0.05)  # the same update, to bf16's rounding
        # Quintic Newton–Schulz leaves every singular value near 1 (not exactly: its coefficients trade that for speed).
        singular = torch.linalg.svdvals(fp32)
        assert singular.min() > 0.6 and singular.max() < 1.3


def test_muon_orthogonalises_in_fp32_where_bf16_is_not_native(layout, monkeypatch):
    from gptdraw.gpt import optimizer as optimizers

    config = TrainConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=16), optimizer="muon")
    trained = {}
    for native in (True, False):
        monkeypatch.setattr(optimizers, "native_bf16", lambda device, native=native: native)
        gpt = build_model(config.model, layout, seed=0)
        optimizer = make_optimizer(gpt, config)
        assert optimizer.muon.ns_dtype == (torch.bfloat16 if native else torch.float32)
        for p in gpt.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
        optimizer.step()
        trained[native] = gpt.transformer.h[0].mlp.c_fc.weight.detach().clone()
    # The dtype reaches the update: the two steps differ, by no more than bf16's rounding of it.
    assert not torch.equal(trained[True], trained[False])
    assert torch.allclose(trained[True], trained[False], atol=1e-4)
