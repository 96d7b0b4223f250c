import time

import pytest
import torch
from model_tiny import knowledge, tiny_config, tiny_foundation
from safetensors.torch import load_file

from kcdp_core.config import KCDPConfig
from kcdp_core.model.kcdp import KCDPModel, KCDPOutput
from kcdp_core.model.losses import total_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    return tiny_foundation(tmp_path_factory.mktemp("kcdp"))


def make(foundation, **sections) -> KCDPModel:
    torch.manual_seed(0)
    return KCDPModel.from_config(tiny_config(foundation, **sections))


def randomise_lora(model: KCDPModel, std: float = 0.3) -> None:
    """LoRA B starts at zero (identity); give it values so LoRA changes the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)


def test_output_shapes_and_attention_maps(foundation):
    model = make(foundation).eval()
    k, km = knowledge(model, 3)
    assert k.shape == (3, 16, 32) and km.shape == (3, 16)
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64), k, km)
        levels = model.kadap(torch.rand(3, 3, 64, 64), k, km)
    assert isinstance(out, KCDPOutput)
    assert out.logits.shape == (3, 7) and out.probs.shape == (3, 7)
    assert out.features.shape == (3, 32) and out.balance_loss.shape == ()
    assert out.router_probs.shape == (3, 4)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(3))
    # Up block 0 (no cross-attention) gives F_0 only; blocks 1-3 carry 2L = 16 attention-map channels.
    assert [tuple(h.shape[1:]) for h in levels] == [(32, 2, 2), (48, 4, 4), (32, 8, 8), (32, 8, 8)]
    maps = levels[2][:, 16:]
    # Head-averaged attention over the knowledge tokens: sums to 1 per position, ~0 on padding.
    torch.testing.assert_close(maps.sum(1), torch.ones(3, 8, 8), atol=1e-4, rtol=0)
    pad = (km == 0)[:, :, None, None].expand_as(maps)
    assert maps[pad].abs().max() < 1e-4


def test_padded_knowledge_tokens_do_not_change_the_output(foundation):
    model = make(foundation).eval()
    randomise_lora(model)
    k, km = knowledge(model, 4)
    k2 = k.clone()
    k2[km == 0] = 50.0
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, k, km).logits, model(x, k2, km).logits, atol=1e-5, rtol=1e-5)
        # ...while the real tokens do.
        k3 = k.clone()
        k3[km == 1] += 1.0
        assert (model(x, k, km).logits - model(x, k3, km).logits).abs().max() > 1e-4


def test_lora_mode_trains_only_lora_and_heads(foundation):
    model = make(foundation)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    unet_trained = {n for n in names if n.startswith("kadap.")}
    assert unet_trained and all(
        ".lora_" in n and (".attn2.to_k." in n or ".attn2.to_v." in n) for n in unet_trained
    )
    # Every attn2 K/V of the UNet carries LoRA (down, mid and up blocks).
    n_attn2 = sum(1 for n, _ in model.kadap.unet.named_modules() if n.endswith(".attn2"))
    assert len(unet_trained) == n_attn2 * 2 * 2  # to_k/to_v x lora_A/lora_B
    assert all(n.startswith(("kadap.unet.", "fpn.", "head.", "cliea.")) for n in names)

    base = {n: p.detach().clone() for n, p in model.kadap.unet.named_parameters() if ".lora_" not in n}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    k, km = knowledge(model, 4)
    y = torch.tensor([0, 1, 2, 3])
    model.train()
    for _ in range(2):  # LoRA B is zero at the start: A gets gradient from the second step on
        out = model(torch.rand(4, 3, 64, 64), k, km)
        loss, _ = total_loss(model.config, out, y, model.cliea_scores(out.features, k, km))
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n
        opt.step()
    lora_grads = [p.grad for n, p in model.named_parameters() if ".lora_" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("fpn.", "head.")))
    after = dict(model.kadap.unet.named_parameters())
    assert all(torch.equal(base[n], after[n]) for n in base)
    assert any(after[n].abs().sum() > 0 for n in after if "lora_B" in n)


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("frozen", lambda n: False),
        ("kv", lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n),
        ("full", lambda n: True),
    ],
)
def test_finetune_modes(foundation, mode, expect):
    model = make(foundation, perception={"finetune": mode})
    for n, p in model.kadap.unet.named_parameters():
        assert p.requires_grad == expect(n), n
        assert ".lora_" not in n
    assert not any(p.requires_grad for p in model.kadap.vae.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    saved = set(model.trained_state_dict())
    assert saved == {n for n, p in model.named_parameters() if p.requires_grad} | {
        n for n, _ in model.fpn.named_buffers(prefix="fpn")
    }
    unet_saved = {n for n in saved if n.startswith("kadap.")}
    assert unet_saved == {f"kadap.unet.{n}" for n, p in model.kadap.unet.named_parameters() if expect(n)}


def test_linear_head_and_no_knowledge_ablations(foundation):
    model = make(foundation, head={"classifier": "linear", "use_knowledge": False}).eval()
    k, km = knowledge(model, 2)
    out = model(torch.rand(2, 3, 64, 64), k, km)
    assert out.logits.shape == (2, 7) and out.router_probs is None and float(out.balance_loss) == 0.0


def test_image_embedding_fused_into_v(foundation):
    model = make(foundation).eval()
    assert model.config.perception.image_embedding  # tiny mirrors mini, the shipped default
    k, km = knowledge(model, 3)
    pixels = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        computed = model(pixels, k, km).logits
        emb = model.image_encoder(pixels)
        given = model(pixels, k, km, emb).logits  # the runtime passes its captioner's embedding
        other = model(pixels, k, km, emb.roll(1, dims=0)).logits
    torch.testing.assert_close(given, computed)
    assert (other - given).abs().max() > 1e-3  # the embedding reaches the logits
    assert not any(n.startswith("image_encoder.") for n in model.trained_state_dict())  # stays frozen

    off = make(foundation, perception={"image_embedding": False}).eval()
    assert off.fpn.extra_norm is None
    assert off(pixels, k, km).logits.shape == (3, 7)
    with pytest.raises(ValueError, match="aligned image encoder"):
        KCDPModel(make(foundation).config, _without_image_encoder(foundation))


def _without_image_encoder(foundation):
    from kcdp_core.model.foundation import load_foundation

    f = load_foundation(tiny_config(foundation))
    f.image_encoder = None
    return f


def test_save_load_round_trip_holds_only_trained_tensors(foundation, tmp_path):
    model = make(foundation)
    randomise_lora(model)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1)
        model.fpn.norm[0].running_mean.add_(0.1)  # BatchNorm statistics are learned state too
    model.eval()
    k, km = knowledge(model, 4)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, k, km)
        ref_scores = model.cliea_scores(ref.features, k, km)
    model.save_pretrained(tmp_path / "ckpt")
    assert KCDPConfig.load(tmp_path / "ckpt") == model.config
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable | {n for n, _ in model.fpn.named_buffers(prefix="fpn")}
    assert not any(n.startswith(("text_encoder.", "image_encoder.", "kadap.vae.")) for n in state)
    assert all(".lora_" in n for n in state if n.startswith("kadap."))

    loaded = KCDPModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        out = loaded(x, k, km)
        scores = loaded.cliea_scores(out.features, k, km)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.features, ref.features)
    assert torch.equal(scores, ref_scores)

    # A checkpoint that does not match its config is refused with the file named.
    other = make(foundation, perception={"finetune": "kv"})
    other.save_pretrained(tmp_path / "kv")
    (tmp_path / "kv" / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    with pytest.raises(ValueError, match="model.safetensors"):
        KCDPModel.from_pretrained(tmp_path / "kv")


def test_merge_lora_gives_the_same_output(foundation):
    model = make(foundation).eval()
    randomise_lora(model)
    k, km = knowledge(model, 4)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, k, km).logits
        model.merge_lora()
        merged = model(x, k, km).logits
    assert (ref - make(foundation).eval()(x, k, km).logits).abs().max() > 1e-3  # LoRA mattered
    torch.testing.assert_close(merged, ref, atol=1e-5, rtol=0)
    kinds = {
        type(m).__name__
        for n, m in model.kadap.unet.named_modules()
        if n.endswith(("attn2.to_k", "attn2.to_v"))
    }
    assert kinds == {"Linear"}
    assert not any(".lora_" in n or "base_layer" in n for n, _ in model.named_parameters())


def test_forward_backward_under_two_seconds(foundation):
    model = make(foundation).train()
    k, km = knowledge(model, 4)
    x = torch.rand(4, 3, 64, 64)
    y = torch.tensor([0, 1, 2, 3])

    def step() -> float:
        start = time.perf_counter()
        out = model(x, k, km)
        loss, _ = total_loss(model.config, out, y, model.cliea_scores(out.features, k, km))
        loss.backward()
        return time.perf_counter() - start

    step()  # warm-up
    times = sorted(step() for _ in range(3))
    print(f"tiny forward+backward, 4 images at 64 px: median {times[1] * 1000:.1f} ms")
    assert times[1] < 2.0


def test_training_loss_falls_on_separable_task(foundation):
    """Two classes told apart by colour (knowledge identical for all): 40 steps drive the loss down."""
    model = make(foundation, labels=("anger", "sadness"))
    torch.manual_seed(0)
    n = 16
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 64, 64) * 0.1
    x[y == 0, 0] += 0.7  # red
    x[y == 1, 2] += 0.7  # blue
    k, km = knowledge(model, 1)
    k, km = k.expand(n, -1, -1), km.expand(n, -1)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(40):
        idx = torch.randperm(n)[:8]
        out = model(x[idx], k[idx], km[idx])
        loss, parts = total_loss(model.config, out, y[idx], model.cliea_scores(out.features, k[idx], km[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
        assert set(parts) >= {"ce_s", "ccl", "balance", "loss"}
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    model.eval()
    with torch.no_grad():
        assert (model(x, k, km).logits.argmax(-1) == y).float().mean() == 1.0


def test_total_loss_combines_terms(foundation):
    model = make(foundation, train={"lambda1": 2.0, "lambda2": 0.5, "balance_weight": 0.1}).eval()
    k, km = knowledge(model, 4)
    with torch.no_grad():
        out_s = model(torch.rand(4, 3, 64, 64), k, km)
        out_t = model(torch.rand(4, 3, 64, 64), k, km)
        scores = model.cliea_scores(out_s.features, k, km)
    y = torch.tensor([0, 1, 2, 3])
    pseudo, keep = torch.tensor([1, 1, 2, 2]), torch.tensor([True, False, True, True])
    loss, parts = total_loss(model.config, out_s, y, scores, out_t, pseudo, keep)
    ce = torch.nn.functional.cross_entropy
    expect = (
        2.0 * ce(out_s.logits, y)
        + 0.5 * ce(out_t.logits[keep], pseudo[keep])
        + ce(scores, y)
        + 0.1 * (out_s.balance_loss + out_t.balance_loss)
    )
    torch.testing.assert_close(loss, expect)
    assert parts["loss"] == pytest.approx(float(expect), rel=1e-5) and parts["kept_t"] == 0.75


def test_one_pass_is_deterministic_and_noise_is_optional(foundation):
    x = torch.rand(2, 3, 64, 64)
    model = make(foundation).eval()
    k, km = knowledge(model, 2)
    with torch.no_grad():
        assert torch.equal(model(x, k, km).logits, model(x, k, km).logits)  # t=1, no noise
        noisy = make(foundation, perception={"add_noise": True, "timestep": 500}).eval()
        assert int(noisy.kadap.timestep) == 500
        assert not torch.equal(noisy(x, k, km).logits, noisy(x, k, km).logits)


def test_deep_copy_captures_into_its_own_store(foundation):
    import copy

    model = make(foundation).eval()
    randomise_lora(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.head.parameters():
            p.add_(0.5)
    k, km = knowledge(model, 2)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, k, km)
        out = twin(x, k, km)
    assert twin.kadap.store is not model.kadap.store
    torch.testing.assert_close(out.features, ref.features)  # same perception, own capture
    assert not torch.equal(out.logits, ref.logits)


def test_image_tail_trains_a_copy_and_shares_the_frozen_trunk(foundation, tmp_path):
    model = make(foundation, perception={"image_tail": 2}).eval()
    assert model.image_inputs == {"image_features": model.image_tail.dim}
    assert model.fpn.extra_norm.num_features == model.image_tail.dim
    k, km = knowledge(model, 3)
    pixels = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        # the copy starts as the frozen stages: its features are the frozen encoder's pooled features
        torch.testing.assert_close(model.image_view(pixels), model.image_encoder.features(pixels))
        # the exported image encoder graph: one trunk pass, the frozen embedding and the tail's features
        embedding, features = model.image_encoder_graph_module()(pixels)
        torch.testing.assert_close(embedding, model.image_encoder(pixels))
        torch.testing.assert_close(model(pixels, k, km, features).logits, model(pixels, k, km).logits)
    trained = model.trained_state_dict()
    assert any(n.startswith("image_tail.") and "running_mean" not in n for n in trained)
    assert not any(n.startswith("image_encoder.") for n in trained)

    # a training step moves the copy, never the frozen encoder the retrieval captioner uses
    frozen = {n: p.clone() for n, p in model.image_encoder.named_parameters()}
    tail = {n: p.clone() for n, p in model.image_tail.named_parameters()}
    model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(model(pixels, k, km).logits, torch.tensor([0, 1, 2])).backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.image_encoder.named_parameters())
    assert any(not torch.equal(p, tail[n]) for n, p in model.image_tail.named_parameters())

    model.eval().save_pretrained(tmp_path / "ckpt")
    again = KCDPModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(again(pixels, k, km).logits, model(pixels, k, km).logits)
    with pytest.raises(ValueError, match="image_tail = 9"):
        make(foundation, perception={"image_tail": 9})


def test_face_view_reads_the_face_through_the_same_tail(foundation):
    model = make(foundation, perception={"image_tail": 2, "face_view": 48}).eval()
    tail = model.image_tail.dim
    assert model.fpn.extra_norm.num_features == 2 * tail  # whole image's features, then the face's
    k, km = knowledge(model, 2)
    pixels, face = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        view = model.image_view(pixels, face)
        torch.testing.assert_close(view[:, :tail], model.image_encoder.features(pixels))
        torch.testing.assert_close(view[:, tail:], model.image_encoder.features(face))
        # two exported graphs: the image encoder's embedding is the whole image's, as the bank expects
        assert model.image_inputs == {"image_features": tail, "face_features": tail}
        embedding, features = model.image_encoder_graph_module()(pixels)
        torch.testing.assert_close(embedding, model.image_encoder(pixels))
        torch.testing.assert_close(features, view[:, :tail])
        torch.testing.assert_close(model.face_encoder_graph_module()(face), view[:, tail:])
        other = model(pixels, k, km, face=face.flip(0)).logits
        assert not torch.allclose(model(pixels, k, km, face=face).logits, other)  # the face is read
    with pytest.raises(ValueError, match="face view"):
        model(pixels, k, km)
    with pytest.raises(ValueError, match="image_tail"):
        make(foundation, perception={"face_view": 48})
