"""xar family: shapes, the NCL objective, KV-cached sampling, data splits and loading paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import ConfigError, KeyMismatchError
from zoo.models.xar import XARDataModule, XARModule
from zoo.models.xar.model import block_causal_mask, entity_order, teacher_forcing_mask

torch.set_num_threads(1)
TINY = dict(zoo.model_info("xar-tiny").config)
SMALL = {**TINY, "dim": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2}


def make(**overrides) -> XARModule:
    torch.manual_seed(0)
    return XARModule(**{**SMALL, **overrides})


@pytest.mark.parametrize("entity,size,expected",
                         [("token", 1, 16), ("cell", 2, 4), ("subsample", 2, 4), ("image", 1, 1)])
def test_entity_layouts_cover_the_grid_once(entity, size, expected):
    order, ids = entity_order(4, entity, size)
    assert sorted(order.tolist()) == list(range(16))
    assert int(ids.max()) + 1 == expected
    assert torch.all(ids[1:] >= ids[:-1])  # entity-major sequence


def test_cell_entity_holds_neighbouring_tokens():
    order, _ = entity_order(4, "cell", 2)
    assert order[:4].tolist() == [0, 1, 4, 5]  # top-left 2x2 cell of the 4x4 grid, raster inside
    order, _ = entity_order(4, "subsample", 2)
    assert order[:4].tolist() == [0, 2, 8, 10]  # stride-2 lattice


def test_masks():
    ids = torch.tensor([0, 0, 1, 1])
    mask = block_causal_mask(ids)
    assert mask[0].tolist() == [True, True, False, False] and mask[3].tolist() == [True] * 4
    tf = teacher_forcing_mask(ids)
    # noisy entity 1 (rows 6, 7) sees clean entity 0 and noisy entity 1 only
    assert tf[6].tolist() == [True, True, False, False, False, False, True, True]
    # noisy entity 0 sees no clean context
    assert tf[4].tolist() == [False, False, False, False, True, True, False, False]


def test_bad_configs_and_inputs_name_the_fix():
    with pytest.raises(ConfigError, match="entity_size"):
        make(entity_size=3)
    with pytest.raises(ConfigError, match="unknown entity"):
        make(entity="pixel")
    with pytest.raises(ConfigError, match="context"):
        make(context="dirty")
    m = make()
    with pytest.raises(ConfigError, match="image_size"):
        m.training_step({"images": torch.zeros(2, 1, 16, 16), "labels": torch.zeros(2, dtype=torch.long)}, 0)
    with pytest.raises(ConfigError, match="num_classes"):
        m.training_step({"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 12])}, 0)
    with pytest.raises(ConfigError, match="class_labels"):
        m.generate([11])


def test_forward_is_deterministic_in_eval_and_shapes():
    m = make().eval()
    batch = m.example_batch(3)
    a, b = m(batch), m(batch)
    assert a["velocity"].shape == (3, 16, 4)
    assert torch.equal(a["velocity"], b["velocity"])
    assert a["loss"].ndim == 0


@pytest.mark.parametrize("context", ["noisy", "clean"])
def test_loss_falls_when_overfitting_a_batch(context):
    m = make(context=context, label_drop=0.0)
    batch = m.example_batch(8)
    opt = torch.optim.AdamW(m.net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        # fixed noise and times so the loss measures fit, not sampling luck
        loss = m.flow_matching_loss(batch, torch.Generator().manual_seed(1))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    del gen
    assert losses[-1] < 0.5 * losses[0]


def test_teacher_forcing_prediction_ignores_context_noise():
    """Clean-context arm: the velocity of entity n must not depend on the noise of other entities."""
    m = make(context="clean").eval()
    net, batch = m.net, m.example_batch(2)
    x = net.to_sequence(m.encode(batch["images"]))
    t = torch.full((2, net.num_entities), 0.5)
    cond = net.condition(batch["labels"], torch.cat([torch.zeros_like(t), t], 1))
    noisy = torch.randn_like(x)
    out1 = net(torch.cat([x, noisy], 1), cond, net.two_stream_view())[:, x.shape[1]:]
    noisy2 = noisy.clone()
    noisy2[:, net.entity_len:] += 1.0  # perturb entities 1.. only
    out2 = net(torch.cat([x, noisy2], 1), cond, net.two_stream_view())[:, x.shape[1]:]
    assert torch.allclose(out1[:, :net.entity_len], out2[:, :net.entity_len], atol=1e-5)
    assert not torch.allclose(out1[:, net.entity_len:], out2[:, net.entity_len:], atol=1e-3)


@pytest.mark.parametrize("entity,size", [("cell", 2), ("token", 1), ("subsample", 2)])
def test_kv_cached_step_equals_masked_full_sequence(entity, size):
    """Sampling entity n with the clean entities < n in the KV cache = the block-causal training pass."""
    m = make(entity=entity, entity_size=size).eval()
    net = m.net
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 4])
    seq = torch.randn(2, net.seq_len, net.token_dim, generator=g)
    n, t_cur = net.num_entities - 1, 0.3
    t = torch.zeros(2, net.num_entities)
    t[:, n] = t_cur
    full = net(seq, net.condition(labels, t), net.full_view())
    caches = net.new_caches()
    L = net.entity_len
    with torch.no_grad():
        for k in range(n):
            net(seq[:, k * L:(k + 1) * L], net.condition(labels, torch.zeros(2, 1)), net.entity_view(k, caches, True))
        step = net(seq[:, n * L:], net.condition(labels, torch.full((2, 1), t_cur)), net.entity_view(n, caches, False))
    assert torch.allclose(step, full[:, n * L:], atol=1e-5)


def test_generate_is_seeded_and_in_range():
    m = make().eval()
    for solver in ("sde", "ode"):
        a = m.generate([0, 5], num_steps=3, solver=solver, seed=0)
        b = m.generate([0, 5], num_steps=3, solver=solver, seed=0)
        assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)
        assert a.min() >= -1 and a.max() <= 1


def test_ema_tracks_weights_during_fit(tmp_path):
    import lightning.pytorch as pl

    m = make(ema_decay=0.5)
    dm = XARDataModule(batch_size=16, limit=64, cache_dir=str(tmp_path))
    before = [p.clone() for p in m.ema.parameters()]
    pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, gradient_clip_val=1.0).fit(m, dm)
    assert any(not torch.equal(b, p) for b, p in zip(before, m.ema.parameters()))
    assert all(not p.requires_grad for p in m.ema.parameters())


def test_hold_then_cosine_schedule_is_relative_to_run_length():
    from zoo.core.module import OptimConfig
    from zoo.models.xar.module import hold_then_cosine

    f = hold_then_cosine(OptimConfig(warmup=0.1, min_lr_ratio=0.0), total_steps=100, hold=0.75)
    assert f(0) == pytest.approx(0.1) and f(50) == 1.0 and f(74) == 1.0
    assert 0.4 < f(87) < 0.6 and f(100) == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------ data
def test_digit_splits_are_leak_free(tmp_path):
    dm = XARDataModule(cache_dir=str(tmp_path))
    raw = dm.load_source()
    groups = {name: set(split["group"]) for name, split in raw.items()}
    assert not groups["train"] & groups["validation"] and not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert sum(len(s) for s in raw.values()) == 1797
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (64, 1, 8, 8) and batch["images"].min() >= -1 and batch["images"].max() <= 1


def test_local_image_folder_loads_and_resizes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(6):
            array = (rng.random((12, 12)) * 255).astype(np.uint8)
            Image.fromarray(array, mode="L").save(tmp_path / "imgs" / label / f"{i}.png")
    dm = XARDataModule(source=str(tmp_path / "imgs"), image_size=8, batch_size=4, val_fraction=0.2,
                       test_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert sum(len(s) for s in dm.splits.values()) == 12
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 1, 8, 8)
    assert set(batch["labels"].tolist()) <= {0, 1}


def test_local_file_without_labels_is_refused(tmp_path):
    import json

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"pixels": [0.0] * 64}) for _ in range(10)))
    dm = XARDataModule(source=str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="label"):
        dm.setup()


# ------------------------------------------------------------------------------------------ converter
def _upstream_rope(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables as upstream stores them: EVA-02 2D tables on 16x16, reordered into 2x2 cells of 8x8."""
    d = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, d, 2)[: d // 2].float() / d))
    f = torch.repeat_interleave(torch.arange(16).float()[:, None] * freqs, 2, dim=-1)  # [16, d]
    table = torch.cat([f[:, None, :].expand(16, 16, d), f[None, :, :].expand(16, 16, d)], dim=-1)
    table = table.reshape(2, 8, 2, 8, head_dim).permute(0, 2, 1, 3, 4).reshape(256, head_dim)
    return table.cos(), table.sin()


def _upstream_state(dim=32, heads=2, depth=1, seed=0):
    torch.manual_seed(seed)
    donor = XARModule(image_size=16, channels=16, num_classes=1000, latent="patch", patch_size=1, entity="cell",
                      entity_size=8, dim=dim, encoder_depth=depth, decoder_depth=depth, num_heads=heads, ema_decay=0)
    state = {k: torch.randn_like(v) * 0.1 for k, v in donor.net.state_dict().items()}
    mask = torch.zeros(256, 256)
    for i in range(4):
        mask[i * 64:(i + 1) * 64, (i + 1) * 64:] = float("-inf")
    state["mask"] = mask[None, None]
    cos, sin = _upstream_rope(dim // heads)
    for prefix in [f"encoder_blocks.{i}" for i in range(depth)] + [f"decoder_blocks.{i}" for i in range(depth)]:
        state[f"{prefix}.attn.rope.freqs"] = torch.zeros(dim // heads // 4)
        state[f"{prefix}.attn.rope.freqs_cos"], state[f"{prefix}.attn.rope.freqs_sin"] = cos, sin
    return state


def _upstream_forward(sd, latents, labels, t, noise, heads):
    """Independent re-statement of upstream xAR's training forward (velocity), from its state dict."""
    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])

    def rms(x, w=None):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x if w is None else x * w

    def rot(x):
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        return torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)

    b, c = latents.shape[:2]
    cells = latents.reshape(b, c, 2, 8, 2, 8).permute(0, 2, 4, 3, 5, 1).reshape(b, 4, 64, c)
    tt = t.reshape(4, b).T[:, :, None, None]  # upstream draws B*clusters times, cluster-major
    x = ((1 - tt) * cells + tt * noise.reshape(b, 4, 64, c)).reshape(b, 256, c)
    steps = (t * 1000).long().float()
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(128).float() / 128)
    temb = torch.cat([torch.cos(steps[:, None] * freqs), torch.sin(steps[:, None] * freqs)], -1)
    temb = lin(F.silu(lin(temb, "time_embed.mlp.0")), "time_embed.mlp.2")
    cond = sd["class_emb.weight"][labels].repeat(4, 1) + temb  # [4B, dim]
    dim = cond.shape[-1]

    def block(x, p):
        mod = lin(F.silu(cond), p + ".ada_lin.1").view(-1, 1, 6, dim).chunk(4, dim=0)
        mod = torch.cat([m.repeat(1, 64, 1, 1) for m in mod], dim=1)
        g1, g2, s1, s2, h1, h2 = mod.unbind(2)
        y = rms(x) * (1 + s1) + h1
        q, k, v = lin(y, p + ".attn.qkv").reshape(b, 256, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        cos, sin = sd[p + ".attn.rope.freqs_cos"], sd[p + ".attn.rope.freqs_sin"]
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=sd["mask"]).transpose(1, 2).reshape(b, 256, dim)
        x = x + lin(a, p + ".attn.proj") * g1
        y = rms(x) * (1 + s2) + h2
        m = lin(F.gelu(lin(y, p + ".mlp.fc1_g")) * lin(y, p + ".mlp.fc1_x"), p + ".mlp.fc2")
        return x + m * g2

    x = rms(lin(x, "z_proj") + sd["encoder_pos_embed_learned"], sd["z_proj_ln.weight"])
    for i in range(len([k for k in sd if k.endswith("ada_lin.1.weight") and k.startswith("encoder")])):
        x = block(x, f"encoder_blocks.{i}")
    x = lin(rms(x, sd["encoder_norm.weight"]), "decoder_embed") + sd["decoder_pos_embed_learned"]
    for i in range(len([k for k in sd if k.endswith("ada_lin.1.weight") and k.startswith("decoder")])):
        x = block(x, f"decoder_blocks.{i}")
    return lin(rms(x, sd["decoder_norm.weight"]), "pred")


def test_converter_parity_with_upstream_layout(tmp_path):
    from zoo.models.xar.convert import load_upstream_xar

    sd = _upstream_state()
    module = XARModule(image_size=16, channels=16, num_classes=1000, latent="patch", patch_size=1, entity="cell",
                       entity_size=8, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
    load_upstream_xar(module, sd)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 16, 16, 16, generator=g)
    labels = torch.tensor([3, 999])
    t = torch.rand(8, generator=g)
    noise = torch.randn(2, 256, 16, generator=g)
    expected = _upstream_forward(sd, latents, labels, t, noise, heads=2)
    net = module.net.eval()
    x = net.to_sequence(module.encode(latents))
    tt = t.reshape(4, 2).T  # [B, entities]
    tok = tt[:, net.entity_ids, None]
    ours = net((1 - tok) * x + tok * noise, net.condition(labels, tt), net.full_view())
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_converter_folder_refuses_partial_and_loads_pickles_weights_only(tmp_path):
    from zoo.models.xar.autoencoder import KLAutoencoder
    from zoo.models.xar.convert import convert_xar

    sd = _upstream_state()
    small = dict(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                 autoencoder={"ch": 8, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [16],
                              "z_channels": 16, "in_channels": 3, "resolution": 256, "num_groups": 4})
    torch.save(sd, tmp_path / "xAR-B.pth")
    vae = KLAutoencoder(XARModule(**{**zoo.model_info("xar-b").config, **small}).autoencoder.config)
    torch.save({"model": vae.state_dict()}, tmp_path / "kl16.ckpt")  # MAR wraps the VAE in {"model": ...}
    module = convert_xar(tmp_path, variant="xar-b", overrides=small)
    assert torch.equal(module.net.pred.weight, sd["pred.weight"])
    assert torch.equal(module.ema.pred.weight, sd["pred.weight"])
    assert torch.equal(module.autoencoder.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    broken = {k: v for k, v in sd.items() if k != "pred.weight"}
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "xAR-B.pth")
    with pytest.raises(KeyMismatchError) as err:
        convert_xar(tmp_path, variant="xar-b", overrides=small)
    assert "pred.weight" in str(err.value) and err.value.unexpected == ["extra.weight"]
    torch.save({"x": torch.nn.Linear(2, 2)}, tmp_path / "xAR-B.pth")  # a pickled module is refused
    with pytest.raises(Exception, match="weights-only|not an xAR|flat state dict"):
        convert_xar(tmp_path, variant="xar-b", overrides=small)


def test_converter_refuses_other_entity_layout():
    from zoo.models.xar.convert import load_upstream_xar

    module = XARModule(image_size=16, channels=16, num_classes=1000, latent="patch", patch_size=1, entity="token",
                       dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
    with pytest.raises(KeyMismatchError, match="entity layout"):
        load_upstream_xar(module, _upstream_state())


# ------------------------------------------------------------------------------------------ CLI and hub
def test_cli_fit_from_tiny_config_then_generate(tmp_path, monkeypatch):
    from zoo.cli import run_cli

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    cli = run_cli(["fit", "-c", "configs/xar/tiny.yaml", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
                   "--trainer.check_val_every_n_epoch=null",
                   "--trainer.limit_val_batches=1", "--model.init_args.eval_samples=20",
                   f"--trainer.default_root_dir={tmp_path}",
                   f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}", "--data.init_args.batch_size=8"])
    model = cli.model
    assert isinstance(model, XARModule) and cli.trainer.global_step == 3
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    images = model.generate(torch.arange(4), num_steps=2, seed=0)
    assert images.shape == (4, 1, 8, 8)


def test_save_and_load_pretrained_reproduces_samples(tmp_path):
    from zoo.hub.pretrained import save_pretrained

    m = make().eval()
    folder = save_pretrained(m, tmp_path / "xar", card=False)
    loaded = zoo.from_pretrained(str(folder)).eval()
    assert torch.equal(m.generate([1, 2], num_steps=2, seed=3), loaded.generate([1, 2], num_steps=2, seed=3))
    assert torch.equal(m(m.example_batch())["velocity"], loaded(m.example_batch())["velocity"])


def test_kl_latents_round_trip_through_the_autoencoder():
    m = make(latent="kl", patch_size=1, autoencoder={"ch": 8, "ch_mult": [1, 2], "z_channels": 4, "num_groups": 4})
    batch = m.example_batch(2)
    assert m.encode(batch["images"]).shape == (2, 16, 4)  # 4x4 latent grid of 4 channels
    assert m.training_step(batch, 0).ndim == 0
    assert m.generate([0, 1], num_steps=2, seed=0).shape == (2, 1, 8, 8)


def test_autoencoder_trains_and_feeds_kl_latents(tmp_path):
    import lightning.pytorch as pl

    from zoo.models.xar import XARAutoencoderModule

    ae_cfg = {"ch": 8, "ch_mult": [1, 2], "z_channels": 4, "num_groups": 4}
    torch.manual_seed(0)
    ae = XARAutoencoderModule(autoencoder=ae_cfg, optim={"lr": 3e-3, "schedule": "constant"})
    dm = XARDataModule(batch_size=32, limit=128, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    before = ae.eval()(batch)["mse"].item()
    trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(ae.train(), dm)
    assert ae.eval()(batch)["mse"].item() < 0.7 * before
    trainer.save_checkpoint(tmp_path / "ae.ckpt")
    m = make(latent="kl", patch_size=1, autoencoder=ae_cfg, autoencoder_weights=str(tmp_path / "ae.ckpt"))
    pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(m, dm)
    assert torch.equal(m.autoencoder.decoder.conv_out.weight, ae.autoencoder.decoder.conv_out.weight)
    assert not any(p.requires_grad for p in m.autoencoder.parameters())


# ------------------------------------------------------------------------------------------ metrics
def test_knn_precision_recall_separates_matching_and_disjoint_sets():
    from zoo.models.xar.metrics import KNNPrecisionRecall

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g)
    same, far = KNNPrecisionRecall(k=3), KNNPrecisionRecall(k=3)
    same.update(real, real=True)
    same.update(torch.randn(300, 8, generator=g), real=False)
    far.update(real, real=True)
    far.update(torch.randn(300, 8, generator=g) + 10, real=False)
    close, apart = same.compute(), far.compute()
    assert close["precision"] > 0.6 and close["recall"] > 0.6
    assert apart["precision"] == 0 and apart["recall"] == 0


def test_shipped_classifier_scores_real_digits_well_and_noise_badly(tmp_path):
    from zoo.models.xar.metrics import SampleQuality

    dm = XARDataModule(batch_size=256, cache_dir=str(tmp_path))
    dm.setup()
    train = torch.cat([b["images"] for b in dm.train_dataloader()])
    test = [b for b in dm.test_dataloader()]
    test_images, test_labels = torch.cat([b["images"] for b in test]), torch.cat([b["labels"] for b in test])
    quality = SampleQuality(train)
    real = quality.score(test_images, test_labels)
    noise = quality.score(torch.rand_like(test_images) * 2 - 1, test_labels)
    assert real["class_accuracy"] > 0.95
    assert real["feature_fd"] < 0.2 * noise["feature_fd"]
    assert real["precision"] > noise["precision"] and real["recall"] > noise["recall"]


def test_validation_scores_generated_samples(tmp_path):
    import lightning.pytorch as pl

    m = make(eval_samples=40)
    dm = XARDataModule(batch_size=64, limit=64, cache_dir=str(tmp_path))
    metrics = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).validate(m, dm)[0]
    assert {"val/loss", "val/feature_fd", "val/class_accuracy", "val/precision", "val/recall"} <= set(metrics)
    assert 0 <= metrics["val/class_accuracy"] <= 1
    with pytest.raises(ConfigError, match="eval_samples"):
        make(eval_samples=10, image_size=16)
