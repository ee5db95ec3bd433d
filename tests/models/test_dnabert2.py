"""DNABERT-2: encoder math, objectives, tokenizers, real-DNA data, converter parity, CLI pre-train -> classify."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import ConfigError, KeyMismatchError
from zoo.models.dnabert2.convert import convert_dnabert2, upstream_config_dict, upstream_state_dict
from zoo.models.dnabert2.data import DnaClassificationData, DnaPretrainData, build_task, mask_tokens, reverse_complement
from zoo.models.dnabert2.model import DnaBert2Config, DnaBertModel, alibi_slopes
from zoo.models.dnabert2.module import DnaBert2ForMaskedLM, DnaBert2ForSequenceClassification, load_encoder
from zoo.models.dnabert2.tokenizer import encode_dna, kmer_tokenizer, scheme_of, train_bpe_tokenizer

TINY = {"vocab_size": 128, "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 6,
        "intermediate_size": 96, "alibi_starting_size": 16}
torch.set_num_threads(1)


def random_dna(n: int, length: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return ["".join("ACGT"[i] for i in torch.randint(0, 4, (length,), generator=g)) for _ in range(n)]


def batch_of(ids: list[list[int]]) -> dict:
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), 3)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 3).long()}


# ------------------------------------------------------------------------------------------- encoder
def test_alibi_slopes_follow_press_et_al():
    assert alibi_slopes(8) == [2.0**-i for i in range(1, 9)]
    # 12 heads (the 117M model): the 8 power-of-two slopes, then every other slope of the 16-head set
    assert alibi_slopes(12) == pytest.approx([2.0**-i for i in range(1, 9)] + [2.0**-x for x in (0.5, 1.5, 2.5, 3.5)])


def test_sdpa_path_equals_explicit_attention_and_padding_is_inert():
    torch.manual_seed(0)
    model = DnaBertModel(DnaBert2Config(**TINY)).eval()
    batch = batch_of([[1, 7, 8, 9, 10, 2], [1, 11, 12, 2]])
    with torch.no_grad():
        fast, pooled, _ = model(batch["input_ids"], batch["attention_mask"])
        slow, _, attentions = model(batch["input_ids"], batch["attention_mask"], output_attentions=True)
        alone, pooled_alone, _ = model(batch["input_ids"][1:, :4], batch["attention_mask"][1:, :4])
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1, :4], alone[0], atol=1e-5, rtol=1e-5)  # pads change nothing
    torch.testing.assert_close(pooled[1], pooled_alone[0], atol=1e-5, rtol=1e-5)
    assert attentions[0].shape == (2, 6, 6, 6) and float(attentions[0][1, :, :, 4:].abs().max()) == 0.0


def test_alibi_table_grows_past_training_length():
    torch.manual_seed(0)
    short = DnaBertModel(DnaBert2Config(**TINY)).eval()  # table of 16 positions
    long = DnaBertModel(DnaBert2Config(**{**TINY, "alibi_starting_size": 64})).eval()
    long.load_state_dict(short.state_dict())
    ids = torch.randint(5, 128, (1, 40))
    with torch.no_grad():
        grown = short(ids)[0]
    assert short.encoder.alibi.shape[-1] == 40
    torch.testing.assert_close(grown, long(ids)[0], atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_fix():
    model = DnaBert2ForMaskedLM(config=TINY)
    with pytest.raises(ConfigError, match="vocab_size"):
        model({"input_ids": torch.tensor([[1, 500, 2]])})
    with pytest.raises(ConfigError, match="encode"):
        model(torch.tensor([[1, 2]]))
    with pytest.raises(ConfigError, match="num_attention_heads"):
        DnaBert2Config(hidden_size=50, num_attention_heads=4)
    with pytest.raises(ConfigError, match="unknown DNABERT-2 config"):
        DnaBert2ForMaskedLM(config={"hidden": 64})
    clf = DnaBert2ForSequenceClassification(config=TINY, num_labels=2)
    batch = clf.example_batch(2)
    batch["labels"] = torch.tensor([0, 3])
    with pytest.raises(ConfigError, match="num_labels=4"):
        clf.training_step(batch, 0)
    with pytest.raises(ConfigError, match="attach_tokenizer"):
        clf.encode(["ACGT"])


# ------------------------------------------------------------------------------------------- objectives
def test_mlm_loss_falls_when_overfitting_a_batch():
    torch.manual_seed(0)
    model = DnaBert2ForMaskedLM(config={**TINY, "hidden_dropout_prob": 0.0})
    batch = model.example_batch(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model.training_step(batch, 0)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(128), abs=0.5) and losses[-1] < 0.25 * losses[0]
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied


def test_classification_learns_and_logs_mcc_f1_accuracy():
    import lightning.pytorch as pl

    torch.manual_seed(0)
    seqs = random_dna(64, 30)
    labels = [int(s.count("G") > s.count("C")) for s in seqs]
    tok = kmer_tokenizer(3)
    ids = encode_dna(tok, seqs)["input_ids"]
    rows = [{"input_ids": i, "label": y} for i, y in zip(ids, labels)]
    data = DnaClassificationData(source="embedded")
    data.attach_tokenizer(tok)
    batch = data.collate(rows)
    model = DnaBert2ForSequenceClassification(config={**TINY, "vocab_size": len(tok)}, num_labels=2,
                                              optim={"lr": 3e-3})
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = pl.Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, loader, loader)
    metrics = trainer.validate(model, loader, verbose=False)[0]
    assert set(metrics) >= {"val/matthews_correlation", "val/f1", "val/accuracy", "val/loss"}
    assert metrics["val/accuracy"] > 0.9 and metrics["val/matthews_correlation"] > 0.8


# ------------------------------------------------------------------------------------------- tokenizers
def test_bpe_and_kmer_tokenizers_share_one_interface(tmp_path):
    from transformers import AutoTokenizer

    seqs = random_dna(300, 120)
    bpe = train_bpe_tokenizer(seqs, vocab_size=200)
    overlap, plain = kmer_tokenizer(6, overlapping=True), kmer_tokenizer(6)
    assert bpe.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    n = {name: len(encode_dna(t, [seqs[0]])["input_ids"][0]) for name, t in
         {"bpe": bpe, "overlap": overlap, "plain": plain}.items()}
    assert n["overlap"] == 120 - 6 + 1 + 2 and n["plain"] == 120 // 6 + 2 and n["bpe"] < n["overlap"] / 2
    ids = encode_dna(bpe, ["acgtn" + seqs[1][:40]])["input_ids"][0]
    assert ids[0] == 1 and ids[-1] == 2 and "".join(bpe.convert_ids_to_tokens(ids[1:-1])) == "ACGTN" + seqs[1][:40]
    overlap.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert scheme_of(again) == ("kmer_overlap", 6)
    assert encode_dna(again, seqs[:3]) == encode_dna(overlap, seqs[:3])
    with pytest.raises(ConfigError, match="list of sequences"):
        encode_dna(bpe, "ACGT")


def test_span_masking_is_contiguous_and_skips_special_tokens():
    ids = torch.randint(5, 100, (8, 200))
    ids[:, 0], ids[:, -1], ids[0, 150:] = 1, 2, 3
    _, labels = mask_tokens(ids, 100, 0.15, span=6, generator=torch.Generator().manual_seed(0))
    masked = labels != -100
    assert not masked[:, 0].any() and not masked[:, -1].any() and not masked[0, 150:].any()
    assert 0.08 < masked[1:].float().mean() < 0.2
    runs = [len(r) for row in masked[1:].int().tolist() for r in "".join(map(str, row[1:-1])).split("0") if r]
    assert min(runs) >= 6 or all(r >= 1 for r in runs) and sum(r >= 6 for r in runs) / len(runs) > 0.6


# ------------------------------------------------------------------------------------------- data
def test_embedded_tasks_are_real_balanced_and_leak_free(tmp_path):
    rows = build_task("coding", 100, 10_000, seed=0, max_bp=300_000)
    assert len(rows["label"]) > 200 and 0.4 < sum(rows["label"]) / len(rows["label"]) < 0.6
    assert set("".join(rows["sequence"][:50])) <= set("ACGT")
    data = DnaClassificationData(task="coding", genome_bp=300_000, cache_dir=str(tmp_path))
    splits = data.load_source()
    groups = {name: set(split["group"]) for name, split in splits.items()}
    assert groups["train"].isdisjoint(groups["validation"]) and groups["train"].isdisjoint(groups["test"])
    assert groups["validation"].isdisjoint(groups["test"]) and all(len(s) for s in splits.values())
    strand = build_task("strand", 100, 10_000, seed=0, max_bp=200_000)
    assert reverse_complement("AACGTN") == "NACGTT" and set(strand["label"]) == {0, 1}
    frame = build_task("frame", 99, 10_000, seed=0, max_bp=200_000)
    assert set(frame["label"]) == {0, 1, 2} and all(len(s) == 99 for s in frame["sequence"])
    with pytest.raises(ConfigError, match="unknown embedded task"):
        DnaClassificationData(task="promoters")


def test_pretrain_data_masks_batches_from_real_genomes(tmp_path):
    data = DnaPretrainData(tokenizer="kmer_overlap", genome_bp=60_000, window_bp=100, block_bp=1000, batch_size=4,
                           cache_dir=str(tmp_path))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == (4, 97) and (batch["labels"] != -100).any()
    assert scheme_of(data.tokenizer) == ("kmer_overlap", 6)
    again = next(iter(data.val_dataloader()))
    assert torch.equal(again["labels"], next(iter(data.val_dataloader()))["labels"])  # reproducible validation


def test_gue_csv_folder_loads_with_dev_split(tmp_path):
    seqs = random_dna(30, 50)
    for split, part in (("train", seqs[:20]), ("dev", seqs[20:25]), ("test", seqs[25:])):
        lines = ["sequence,label"] + [f"{s},{i % 2}" for i, s in enumerate(part)]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    data = DnaClassificationData(source=str(tmp_path), tokenizer="kmer", batch_size=8, cache_dir=str(tmp_path / "c"))
    data.setup("fit")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 20, "validation": 5, "test": 5}
    batch = next(iter(data.val_dataloader()))
    # 8 full 6-mers, the 2 bp tail as one [UNK], [CLS] and [SEP]
    assert batch["input_ids"].shape == (5, 50 // 6 + 1 + 2) and batch["labels"].tolist() == [0, 1, 0, 1, 0]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.csv").write_text("seq,y\nACGT,1\n")
    with pytest.raises(ConfigError, match="label"):
        DnaClassificationData(source=str(tmp_path / "bad"), cache_dir=str(tmp_path / "c")).load_source()


# ------------------------------------------------------------------------------------------- converter
def reference_upstream_mlm(sd: dict, heads: int, slopes: list[float], ids, mask) -> torch.Tensor:
    """Upstream bert_layers.py math written out on raw tensors (padded path, -10000 mask bias)."""
    def ln(x, p):
        return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-12)

    x = ln(sd["bert.embeddings.word_embeddings.weight"][ids] + sd["bert.embeddings.token_type_embeddings.weight"][0],
           "bert.embeddings.LayerNorm")
    b, s, h = x.shape
    d = h // heads
    pos = torch.arange(s)
    bias = -torch.tensor(slopes)[:, None, None] * (pos[None, :] - pos[:, None]).abs()
    bias = bias[None] + (1.0 - mask[:, None, None, :].float()) * -10000.0
    i = 0
    while f"bert.encoder.layer.{i}.mlp.wo.weight" in sd:
        p = f"bert.encoder.layer.{i}."
        qkv = (x @ sd[p + "attention.self.Wqkv.weight"].T + sd[p + "attention.self.Wqkv.bias"]).view(b, s, 3, heads, d)
        q, k, v = (qkv[:, :, j].permute(0, 2, 1, 3) for j in range(3))
        ctx = ((q @ k.transpose(-1, -2)) / math.sqrt(d) + bias).softmax(-1) @ v
        attn = ctx.permute(0, 2, 1, 3).reshape(b, s, h) @ sd[p + "attention.output.dense.weight"].T
        x = ln(attn + sd[p + "attention.output.dense.bias"] + x, p + "attention.output.LayerNorm")
        g = x @ sd[p + "mlp.gated_layers.weight"].T
        inter = g.shape[-1] // 2
        y = (F.gelu(g[..., :inter]) * g[..., inter:]) @ sd[p + "mlp.wo.weight"].T + sd[p + "mlp.wo.bias"]
        x = ln(y + x, p + "mlp.layernorm")
        i += 1
    t = ln(F.gelu(x @ sd["cls.predictions.transform.dense.weight"].T + sd["cls.predictions.transform.dense.bias"]),
           "cls.predictions.transform.LayerNorm")
    return t @ sd["bert.embeddings.word_embeddings.weight"].T + sd["cls.predictions.decoder.bias"]


@pytest.fixture
def upstream_folder(tmp_path):
    """A random checkpoint written exactly in zhihan1996/DNABERT-2-117M's layout (safetensors + tokenizer.json)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = DnaBert2Config(**TINY)
    source = DnaBert2ForMaskedLM(config=cfg)
    state = {k: v + 0.02 * torch.randn_like(v) for k, v in upstream_state_dict(source).items()}
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]  # tied, saved twice
    (tmp_path / "config.json").write_text(json.dumps(upstream_config_dict(cfg)))
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    train_bpe_tokenizer(random_dna(100, 80), vocab_size=128).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path, state


def test_converter_parity_with_upstream_math(upstream_folder):
    folder, state = upstream_folder
    model = convert_dnabert2(folder)
    assert isinstance(model, DnaBert2ForMaskedLM) and model.tokenizer is not None
    batch = model.encode(["ACGTACGGTTAGCCATGA", "TTGACA"])
    with torch.no_grad():
        ours = model(batch)
    ref = reference_upstream_mlm(state, 6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3],
                                 batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (ours[real] - ref[real]).abs().max() < 1e-5


def test_converter_refuses_partial_loads(upstream_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = upstream_folder
    weights = load_file(str(folder / "model.safetensors"))
    broken = dict(weights)
    broken.pop("bert.encoder.layer.1.mlp.gated_layers.weight")
    broken["bert.embeddings.position_embeddings.weight"] = torch.zeros(512, 48)
    save_file(broken, str(folder / "model.safetensors"))
    with pytest.raises(KeyMismatchError) as err:
        convert_dnabert2(folder)
    assert err.value.missing == ["bert.encoder.layer.1.mlp.gated_layers.weight"]
    assert err.value.unexpected == ["bert.embeddings.position_embeddings.weight"]
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(KeyMismatchError, match="mis-shaped"):
        convert_dnabert2(folder)
    config["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    weights["cls.predictions.decoder.weight"] = weights["cls.predictions.decoder.weight"] + 1
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(KeyMismatchError, match="tied"):
        convert_dnabert2(folder)


def test_converter_reads_pickled_classification_checkpoints_safely(tmp_path):
    torch.manual_seed(0)
    source = DnaBert2ForSequenceClassification(config=TINY, num_labels=3)
    (tmp_path / "config.json").write_text(json.dumps(upstream_config_dict(DnaBert2Config(**TINY))))
    torch.save(upstream_state_dict(source), tmp_path / "pytorch_model.bin")
    model = convert_dnabert2(tmp_path)
    assert isinstance(model, DnaBert2ForSequenceClassification) and model.num_labels == 3
    batch = source.eval().example_batch(2)
    assert torch.equal(model(batch), source(batch))
    assert zoo.model_info("zhihan1996/DNABERT-2-117M").name == "dnabert2-117m"


# ------------------------------------------------------------------------------------------- pre-train -> fine-tune
def test_init_from_copies_encoder_and_tokenizer_and_round_trips(tmp_path):
    torch.manual_seed(0)
    mlm = DnaBert2ForMaskedLM(config=TINY)
    mlm.attach_tokenizer(train_bpe_tokenizer(random_dna(100, 80), vocab_size=128))
    checkpoint = {"state_dict": mlm.state_dict()}
    mlm.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "mlm.ckpt")
    clf = DnaBert2ForSequenceClassification(config=TINY, init_from=str(tmp_path / "mlm.ckpt"))
    assert torch.equal(clf.bert.encoder.layer[1].mlp.wo.weight, mlm.bert.encoder.layer[1].mlp.wo.weight)
    assert clf.tokenizer is not None and clf.init_args["init_from"] is None  # reload never needs the file
    folder = zoo.save_pretrained(clf, tmp_path / "hub")
    again = zoo.from_pretrained(folder)
    batch = clf.eval().encode(["ACGTTGCAACGT", "GGGCCCAT"])
    assert torch.equal(again(batch), clf(batch))
    with pytest.raises(KeyMismatchError, match="config"):
        DnaBert2ForSequenceClassification(config={**TINY, "hidden_size": 24}, init_from=str(tmp_path / "mlm.ckpt"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_encoder(clf, tmp_path / "nope.ckpt")


@pytest.mark.slow
def test_cli_pretrain_then_classify_on_real_dna(tmp_path, monkeypatch):
    from zoo.cli import run_cli

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    fast = ["--trainer.max_steps=3", "--trainer.limit_val_batches=2", "--trainer.val_check_interval=3",
            "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=8", "--data.init_args.limit=64"]
    mlm = tmp_path / "mlm"
    run_cli(["fit", "-c", "configs/dnabert2/tiny-mlm.yaml", *fast, "--data.init_args.genome_bp=40000",
             "--data.init_args.block_bp=1000",
             f"--trainer.default_root_dir={mlm}", f"--trainer.callbacks.init_args.dirpath={mlm}"])
    assert (mlm / "last.ckpt").exists()
    clf = tmp_path / "clf"
    cli = run_cli(["fit", "-c", "configs/dnabert2/tiny-classify.yaml", *fast, "--data.init_args.genome_bp=300000",
                   f"--model.init_args.init_from={mlm / 'last.ckpt'}", f"--trainer.default_root_dir={clf}",
                   f"--trainer.callbacks.init_args.dirpath={clf}"])
    assert cli.model.tokenizer is not None and cli.datamodule.tokenizer is cli.model.tokenizer
    assert "val/matthews_correlation" in cli.trainer.callback_metrics
    vocab = cli.model.tokenizer.get_vocab()
    # evaluating a checkpoint tokenizes with the checkpoint's own BPE, not a freshly trained one
    evaluated = run_cli(["test", "-c", "configs/dnabert2/tiny-classify.yaml", *fast[3:],
                         "--data.init_args.genome_bp=300000", f"--ckpt_path={clf / 'last.ckpt'}",
                         f"--trainer.default_root_dir={clf}"])
    assert evaluated.datamodule.tokenizer.get_vocab() == vocab
    assert "test/matthews_correlation" in evaluated.trainer.callback_metrics
