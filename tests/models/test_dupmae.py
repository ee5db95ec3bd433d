"""dupmae family: masks, the three pre-training losses, bi-encoder, search, data, MiniLM init, converter parity."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import CheckpointFormatError, ConfigError, KeyMismatchError
from zoo.models.dupmae import DupMAE, RetrievalData, SearchIndex, bm25_scores, convert_retromae, retrieval_metrics
from zoo.models.dupmae.convert import load_encoder
from zoo.models.dupmae.data import function_pairs, minilm_path, train_wordpiece
from zoo.models.dupmae.masking import IGNORE, decoder_visibility, encoder_mask

torch.set_num_threads(1)
SMALL = {"vocab_size": 300, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 64}


def make(**overrides) -> DupMAE:
    torch.manual_seed(0)
    return DupMAE(**{**SMALL, **overrides})


def word_layout(batch: int, length: int, pad_from: int | None = None):
    word = torch.arange(length).repeat(batch, 1) // 3
    word[:, 0], word[:, -1] = -1, -1
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad_from is not None:
        word[:, pad_from:] = -1
        mask[:, pad_from:] = 0
    return word, mask


# ---------------------------------------------------------------------------------------------- masks
def test_decoder_mask_is_position_specific_and_hides_self_and_pads():
    word, mask = word_layout(2, 16, pad_from=12)
    visible = decoder_visibility(word, mask, 0.5, torch.Generator().manual_seed(0))
    assert visible.shape == (2, 16, 16)
    assert len({tuple(row.tolist()) for row in visible[0, 1:12]}) >= 5  # each row draws its own visible set
    assert not visible.diagonal(dim1=1, dim2=2).any()              # row i never sees itself
    assert visible[:, 1:, 0].all() and not visible[:, 0, 0].any()   # h_CLS visible to every other row
    assert not visible[:, :, 12:].any()                             # pads hidden
    # whole words: tokens of one word are visible together (except the row's own token)
    for i in range(16):
        for w in range(1, 4):
            cols = [j for j in range(16) if word[0, j] == w and j != i]
            assert len({bool(visible[0, i, j]) for j in cols}) <= 1
    ratio = visible[:, 1:12, 1:12].float().mean().item()
    assert 0.3 < ratio < 0.7


def test_encoder_whole_word_masking_and_labels():
    word, mask = word_layout(64, 32)
    ids = torch.randint(5, 300, (64, 32))
    masked, labels = encoder_mask(ids, word, 4, 300, 0.3, torch.Generator().manual_seed(0), (0, 1, 2, 3, 4))
    chosen = labels != IGNORE
    assert torch.equal(labels[chosen], ids[chosen]) and not chosen[word < 0].any()
    assert 0.2 < chosen[word >= 0].float().mean() < 0.4
    assert (masked[chosen] == 4).float().mean() > 0.7               # 80% [MASK]
    assert torch.equal(masked[~chosen], ids[~chosen])
    same_word = (word[:, 1:] == word[:, :-1]) & (word[:, 1:] >= 0)
    assert torch.equal(chosen[:, 1:][same_word], chosen[:, :-1][same_word])  # whole words


def test_bag_of_words_loss_matches_its_definition():
    logits = torch.randn(1, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0]])
    bow = torch.tensor([[2, 5, -1]])
    ot = logits[0, 1:3].max(0).values  # positions >= 1, pad excluded
    expected = -(F.log_softmax(ot, -1)[2] + F.log_softmax(ot, -1)[5]) / 2
    assert torch.allclose(DupMAE.bag_of_words_loss(logits, mask, bow), expected)


# ---------------------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("objective,parts", [("mlm", {"enc"}), ("retromae", {"enc", "dec"}),
                                             ("dupmae", {"enc", "dec", "bow"})])
def test_objectives_have_their_loss_terms(objective, parts):
    model = make(objective=objective)
    out = model(model.example_batch(2))
    assert set(out) == parts | {"loss"}
    expected = out["enc"] + out.get("dec", 0) + 0.1 * out.get("bow", 0)  # L = L_dec + 0.1 L_bow + L_enc
    assert torch.allclose(out["loss"], expected)
    assert (model.model.decoder is None) == (objective == "mlm")


@pytest.mark.parametrize("objective", ["dupmae", "contrastive"])
def test_loss_falls_when_overfitting_one_batch(objective):
    model = make(objective=objective, dropout=0.0)
    batch = model.example_batch(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.6 * first


def test_decoder_reads_only_visible_positions():
    model = make(objective="retromae", dropout=0.0).eval()
    batch = model.example_batch(1)
    with torch.no_grad():
        hidden, _ = model.model.encode(batch["encoder_input_ids"], batch["attention_mask"])
        base = model.model.decode(hidden[:, 0], batch["input_ids"], batch["decoder_visible"])
        row = 5
        hidden_cols = (~batch["decoder_visible"][0, row]).nonzero().flatten()
        changed = batch["input_ids"].clone()
        changed[0, hidden_cols[hidden_cols > 0]] = 7  # alter tokens row 5 cannot see
        other = model.model.decode(hidden[:, 0], changed, batch["decoder_visible"])
    assert torch.allclose(base[0, row], other[0, row], atol=1e-5)
    assert not torch.allclose(base[0, 1:], other[0, 1:], atol=1e-5)


def test_bad_configs_and_batches_name_the_fix():
    with pytest.raises(ConfigError, match="objective"):
        make(objective="splade")
    with pytest.raises(ConfigError, match="num_heads"):
        make(num_heads=3)
    with pytest.raises(ConfigError, match="representation"):
        make(eval_representation="max")
    with pytest.raises(ConfigError, match="RetrievalData\\(task='finetune'\\)"):
        make(objective="contrastive").training_step(make(objective="dupmae").example_batch(2), 0)
    with pytest.raises(ConfigError, match="objective='contrastive'"):
        make(objective="dupmae").training_step(make(objective="contrastive").example_batch(2), 0)
    with pytest.raises(ConfigError, match="match no DupMAE input"):
        make()({"pixels": torch.zeros(1)})
    with pytest.raises(ConfigError, match="mask ratio|encoder_mask_ratio"):
        RetrievalData(encoder_mask_ratio=1.5)


# ---------------------------------------------------------------------------------------------- metrics + search
def test_retrieval_metrics_are_torchmetrics_values():
    relevant = torch.eye(3, dtype=torch.bool)
    perfect = retrieval_metrics(torch.eye(3), relevant, (1,))
    assert perfect["mrr"] == pytest.approx(1.0) and perfect["ndcg"] == pytest.approx(1.0)
    # relevant document ranked second for every query -> MRR 0.5, Recall@1 0
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.1, 0.5, 0.9], [0.9, 0.1, 0.5]])
    second = retrieval_metrics(scores, relevant, (1, 2))
    assert second["mrr"] == pytest.approx(0.5) and second["recall@1"] == 0 and second["recall@2"] == 1


def test_bm25_reference_ranks_lexical_matches_first():
    scores = bm25_scores(["open the file", "sort numbers list", "read file lines"], ["read file", "sort list"])
    assert scores.shape == (2, 3) and scores[0].argmax() == 2 and scores[1].argmax() == 1
    assert scores[1, 0] == 0  # no shared term


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["def add(a, b): return a + b", "def read file(path): open path and read", "sort the list of numbers",
             "return the sum of two numbers", "read a whole file"] * 20
    return train_wordpiece(texts, 200)


def test_search_returns_ranked_hits_for_every_representation(tokenizer):
    model = make(similarity="cosine", top_k_terms=16)
    model.attach_tokenizer(tokenizer)
    docs = ["def add(a, b): return a + b", "def read(path): return open(path).read()", "def sort(x): x.sort()"]
    for rep in ("cls", "mean", "ot", "unified"):
        index = SearchIndex(model, representation=rep).add(docs, ids=["add", "read", "sort"])
        hits = index.search(["def add(a, b): return a + b"], k=2)[0]
        assert len(hits) == 2 and hits[0].score >= hits[1].score
        if rep in ("mean", "unified"):
            assert hits[0].doc_id == "add"  # an exact copy of a document is its own best match
        metrics = index.evaluate(["def add(a, b): return a + b"], ["add"])
        assert set(metrics) >= {"mrr", "ndcg", "recall@10"}
    with pytest.raises(ConfigError, match="list"):
        index.add("one string")
    with pytest.raises(ConfigError, match="empty"):
        SearchIndex(model).search("anything")
    with pytest.raises(ConfigError, match="tokenizer"):
        SearchIndex(make())


# ---------------------------------------------------------------------------------------------- data
def test_function_pairs_drop_the_docstring(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text('def f(x):\n    """Return twice the value x.\n\n    Long text."""\n    return 2 * x\n')
    (row,) = function_pairs(src, tmp_path)
    assert row["query"] == "Return twice the value x." and "Return twice" not in row["passage"]
    assert row["passage"].startswith("def f(x):") and "return 2 * x" in row["passage"]
    assert "Return twice" in row["text"] and row["group"] == "mod.py"


def test_embedded_pairs_are_held_out_by_file(tmp_path):
    splits = RetrievalData().load_source()
    groups = {name: set(split["group"]) for name, split in splits.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert len(splits["train"]) > 3000 and len(splits["test"]) > 100


def write_beir(folder):
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"passage number {i} about topic {i % 3}"}
            for i in range(12)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"question {i}"}) + "\n"
                                                  for i in range(12)))
    for split, ids in (("train", range(8)), ("dev", range(8, 10)), ("test", range(10, 12))):
        rows = "".join(f"q{i}\td{i}\t1\n" for i in ids) + ("q0\td5\t0\n" if split == "train" else "")
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)


def test_beir_folder_loads_trains_and_evaluates(tmp_path):
    write_beir(tmp_path / "beir")
    data = RetrievalData(task="finetune", source=str(tmp_path / "beir"), batch_size=4, max_length=32,
                         vocab_size=120, cache_dir=str(tmp_path / "cache"))
    splits = data.load_source()
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "validation": 2, "test": 2}  # score-0 row dropped
    assert splits["test"][0]["passage"] == "title 10 passage number 10 about topic 1"
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["passage_input_ids"].shape[0] == 2 * batch["query_input_ids"].shape[0]  # 1 hard negative each
    with pytest.raises(ConfigError, match="queries.jsonl"):
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "corpus.jsonl").write_text("")
        RetrievalData(source=str(tmp_path / "broken"), cache_dir=str(tmp_path / "cache")).load_source()


# ----------------------------------------------------------------------------------- pretrained init + converter
def test_minilm_init_matches_the_real_pretrained_bert():
    from transformers import BertModel

    config = {k: v for k, v in zoo.model_info("dupmae-minilm").config.items() if k != "init_from"}
    model = DupMAE(**{**config, "objective": "contrastive"})
    report = load_encoder(model, "minilm")
    assert report["tokenizer"] and report["fresh_head"]  # BertModel layout: the MLM head starts fresh
    reference = BertModel.from_pretrained(str(minilm_path())).eval()
    model.eval()
    enc = model.tokenizer(["Return the sum of two numbers.", "def add(a, b): return a + b"], padding=True,
                          return_tensors="pt")
    with torch.no_grad():
        ours = model.model.encoder.bert(**enc).last_hidden_state
        theirs = reference(**enc).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)
    vectors = model.encode_texts(["Return the sum of two numbers.", "Add two numbers.", "Open a socket."])
    sims = F.normalize(vectors["mean"], dim=-1) @ F.normalize(vectors["mean"], dim=-1).T
    assert sims[0, 1] > sims[0, 2]  # a real sentence encoder: paraphrases are closer
    with pytest.raises(KeyMismatchError, match="mis-shaped"):
        load_encoder(make(), "minilm")


def random_retromae_folder(folder, safetensors: bool):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    upstream = BertForMaskedLM(config).eval()
    upstream.save_pretrained(str(folder), safe_serialization=safetensors)
    if not safetensors and not (folder / "pytorch_model.bin").exists():
        torch.save(upstream.state_dict(), folder / "pytorch_model.bin")
        for f in folder.glob("*.safetensors"):
            f.unlink()
    return upstream


@pytest.mark.parametrize("safetensors", [True, False])
def test_retromae_converter_parity(tmp_path, safetensors):
    upstream = random_retromae_folder(tmp_path, safetensors)
    model = convert_retromae(tmp_path)
    ids = torch.randint(5, 300, (2, 10))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = upstream(input_ids=ids, attention_mask=mask).logits
        _, ours = model.model.encode(ids, mask)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert zoo.registry.find_upstream("Shitao/RetroMAE").converter is convert_retromae


def test_converter_refuses_partial_and_foreign_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file

    random_retromae_folder(tmp_path, True)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights.pop("bert.encoder.layer.1.output.dense.weight")
    weights["bert.extra.weight"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyMismatchError) as err:
        convert_retromae(tmp_path)
    assert "bert.encoder.layer.1.output.dense.weight" in err.value.missing
    assert err.value.unexpected == ["bert.extra.weight"]
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        load_encoder(make(), str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------- end to end
def test_pretrain_then_finetune_then_search(tmp_path, capsys):
    import lightning.pytorch as pl

    def trainer(steps, root):
        return pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                          limit_val_batches=1, num_sanity_val_steps=0, val_check_interval=2,
                          default_root_dir=str(root))

    cache = None  # the shared zoo cache: the stdlib pairs are built once per machine
    pre = make(objective="dupmae", similarity="cosine")
    pre_data = RetrievalData(task="pretrain", limit=64, batch_size=8, max_length=32, vocab_size=300, cache_dir=cache)
    run = trainer(2, tmp_path / "pre")
    run.fit(pre, pre_data)
    assert "val/mrr_unified" in run.callback_metrics and pre.tokenizer is not None
    ckpt = tmp_path / "pre.ckpt"
    run.save_checkpoint(ckpt)

    fine = make(objective="contrastive", similarity="cosine", temperature=0.05, train_representation="unified",
                init_from=str(ckpt))
    fine_data = RetrievalData(task="finetune", limit=64, batch_size=8, max_length=32, cache_dir=cache)
    run = trainer(2, tmp_path / "fine")
    run.fit(fine, fine_data)
    assert fine.init_report["source"] == str(ckpt) and fine.tokenizer is not None
    assert run.callback_metrics["train/loss"].isfinite()

    folder = zoo.save_pretrained(fine, tmp_path / "hub")
    loaded = zoo.from_pretrained(folder)
    assert loaded.init_report is None  # loading a saved model never re-reads init_from
    docs = ["def add(a, b):\n    return a + b", "def read(path):\n    return open(path).read()"]
    hits = SearchIndex(loaded).add(docs).search(["Return the sum."], k=2)[0]
    assert len(hits) == 2 and hits[0].score >= hits[1].score

    from zoo.models.dupmae.search import main  # the command-line search: python -m zoo.models.dupmae

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"f{i}", "title": "", "text": d}) + "\n" for i, d in enumerate(docs)))
    assert main([str(folder), str(corpus), "Return the sum.", "-k", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["query"] == "Return the sum." and line["hits"][0]["id"] in {"f0", "f1"}
