"""Registry-wide behaviour: every family's tiny model gets these tests for free (timm style)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import ModelCard

import zoo
from zoo.hub.card import family_metadata

TINY = sorted(n for n in zoo.list_models("*-tiny"))


def outputs_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(outputs_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(outputs_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(params=TINY)
def tiny(request):
    torch.manual_seed(0)
    return request.param, zoo.create_model(request.param)


def test_forward_backward(tiny):
    name, model = tiny
    model.train()
    loss = model.training_step(model.example_batch(2), 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    assert loss.ndim == 0 and torch.isfinite(loss), name
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: no gradient reached the weights"


def test_save_load_identical_outputs_and_card(tiny, tmp_path):
    name, model = tiny
    model.eval()
    batch = model.example_batch(2)
    with torch.no_grad():
        torch.manual_seed(1)
        before = model(batch)
    folder = zoo.save_pretrained(model, tmp_path / name)
    loaded = zoo.from_pretrained(folder)
    with torch.no_grad():
        torch.manual_seed(1)
        after = loaded(batch)
    assert outputs_equal(before, after), f"{name}: outputs changed after save -> load"
    card = ModelCard.load(folder / "README.md")
    family = zoo.model_info(name).family
    assert card.data.library_name == "zoo" and family in card.data.tags
    assert zoo.model_info(name).paper.arxiv in card.text
    if family != "tinytest":
        meta = family_metadata(family)
        assert meta.get("summary") and meta.get("paper_results"), f"hub_cards/{family}.yaml lacks summary/results"
        for row in meta["paper_results"]:
            assert str(row["value"]) in card.text


def test_two_step_fit_from_the_tiny_config(tiny, tmp_path):
    name, _ = tiny
    entry = zoo.model_info(name)
    if not entry.config_file:
        pytest.skip(f"{name} has no config file")
    run = zoo.load_config(entry.config_file, [
        "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ])
    run.trainer.fit(run.model, run.datamodule)
    assert run.trainer.global_step == 2
    losses = {k: float(v) for k, v in run.trainer.callback_metrics.items() if k.startswith("train/")}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
