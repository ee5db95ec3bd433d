"""CodeT5 family: tokenizer layout, identifiers, objectives, metrics, data, training, converter parity."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from zoo.errors import CheckpointFormatError, ConfigError, KeyMismatchError
from zoo.models.codet5 import CodePretrainData, CodeSummarizationData, CodeT5Module
from zoo.models.codet5.convert import convert_codet5
from zoo.models.codet5.identifiers import extract_identifiers
from zoo.models.codet5.metrics import ExactMatch, SmoothedBLEU4, smoothed_sentence_bleu
from zoo.models.codet5.objectives import IGNORE, code_features, span_corrupt
from zoo.models.codet5.tokenizer import LANGUAGE_TOKENS, language_token, sentinel_ids, train_tokenizer

torch.set_num_threads(1)

CODE = '''def add_numbers(first, second):
    """Add two numbers."""
    total = first + second
    return total
'''
SNIPPETS = [CODE, "def scale(vector, factor):\n    return [factor * value for value in vector]\n",
            "class Stack:\n    def push(self, item):\n"
            "        self.items.append(item)\n        return len(self.items)\n"]
TINY = dict(vocab_size=512, d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, dropout_rate=0.0,
            num_beams=2, max_target_length=16)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SNIPPETS * 30, vocab_size=380, min_frequency=2)


# ---------------------------------------------------------------------- tokenizer and identifiers
def test_tokenizer_has_codet5_special_layout(tokenizer, tmp_path):
    ids = tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>", "<mask>"])
    assert ids == [0, 1, 2, 3, 4]
    sentinels = sentinel_ids(tokenizer)
    assert len(set(sentinels)) == 100 and sentinels[0] == max(sentinels) and sentinels[99] == min(sentinels)
    langs = tokenizer.convert_tokens_to_ids(list(LANGUAGE_TOKENS))
    assert min(langs) > max(sentinels) and len(tokenizer) == max(langs) + 1
    enc = tokenizer("def f(x):")["input_ids"]
    assert enc[0] == 1 and enc[-1] == 2  # <s> ... </s> like upstream's RobertaTokenizer
    tokenizer.save_pretrained(tmp_path)
    reloaded = CodeT5Module.load_tokenizer(tmp_path)
    assert reloaded("def f(<extra_id_3>):")["input_ids"] == tokenizer("def f(<extra_id_3>):")["input_ids"]
    with pytest.raises(ConfigError, match="language"):
        language_token("cobol")
    with pytest.raises(ConfigError, match=">= 261"):
        train_tokenizer(["x"], vocab_size=100)


def test_identifiers_are_tree_sitter_leaves_without_keywords():
    names = [i.name for i in extract_identifiers(CODE)]
    assert names == ["add_numbers", "first", "second", "total", "first", "second", "total"]
    assert "return" not in names and "def" not in names
    assert [i.name for i in extract_identifiers("int f(int x) { return x + y; }".join(["class A { ", " }"]),
                                                "java")] == ["A", "f", "x", "x", "y"]
    assert {i.name for i in extract_identifiers("func f(a int) int { return a }", "go")} >= {"f", "a"}
    ident = extract_identifiers("é = naïve_name")[1]
    assert "é = naïve_name"[ident.start:ident.end] == "naïve_name"  # char, not byte, offsets
    with pytest.raises(ConfigError, match="supported"):
        extract_identifiers("x", "cobol")


# ---------------------------------------------------------------------- objectives
def test_it_labels_and_mip_share_one_sentinel_per_identifier(tokenizer):
    feats = code_features(tokenizer, [CODE], ["python"], 128, 64)
    tokens = tokenizer.convert_ids_to_tokens(feats["input_ids"][0])
    tagged = {t.lstrip("Ġ") for t, y in zip(tokens, feats["it_labels"][0]) if y == 1}
    assert {"first", "second", "total"} <= tagged and "return" not in tagged and "def" not in tagged
    assert feats["it_labels"][0][0] == IGNORE and feats["it_labels"][0][-1] == IGNORE
    masked = tokenizer.decode(feats["mip_input_ids"][0])
    assert "first" not in masked and masked.count("<extra_id_1>") == 2  # `first` occurs twice, one sentinel
    target = tokenizer.decode(feats["mip_labels"][0], skip_special_tokens=False)
    assert target == "<s><extra_id_0> add_numbers<extra_id_1> first<extra_id_2> second<extra_id_3> total</s>"
    # names are spelled as after a space in code, so a name seen in the input can be copied token for token
    target_tokens = set(tokenizer.convert_ids_to_tokens(feats["mip_labels"][0]))
    assert {"Ġfirst", "Ġsecond"} <= target_tokens and {"Ġfirst", "Ġsecond"} <= set(tokens)


def test_msp_masks_whole_words_at_the_rate_and_reconstructs(tokenizer):
    code = "\n".join(f"value_{i} = compute(item_{i}, factor)" for i in range(40))
    feats = code_features(tokenizer, [code], ["python"], 512, 512)
    ids, words = feats["input_ids"][0], feats["word_ids"][0]
    source, target = span_corrupt(ids, words, sentinel_ids(tokenizer), np.random.default_rng(0))
    sentinels = set(sentinel_ids(tokenizer))
    # fill each sentinel of the source with its span from the target: the original comes back
    spans, current = {}, None
    for t in target[1:-1]:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    rebuilt = [x for t in source for x in (spans[t] if t in sentinels else [t])]
    assert rebuilt == ids
    hidden_tokens = [x for span in spans.values() for x in span]
    position, hidden = 0, set()
    for t in source:  # walk the source: a sentinel stands for len(span) original tokens
        if t in sentinels:
            hidden |= {words[i] for i in range(position, position + len(spans[t])) if words[i] >= 0}
            position += len(spans[t])
        else:
            position += 1
    n_words = len({w for w in words if w >= 0})
    assert hidden_tokens and abs(len(hidden) - 0.15 * n_words) <= 1  # 15% of the words
    visible = _visible_words(source, spans, sentinels, words)
    assert not hidden & visible  # whole words: never half of a word masked
    assert all(1 <= len(s) for s in spans.values())


def _visible_words(source, spans, sentinels, words):
    position, visible = 0, set()
    for t in source:
        if t in sentinels:
            position += len(spans[t])
        else:
            if words[position] >= 0:
                visible.add(words[position])
            position += 1
    return visible


# ---------------------------------------------------------------------- metrics
def test_smoothed_bleu_matches_codexglue_definition():
    assert smoothed_sentence_bleu("Add two numbers.", "add two numbers .") == pytest.approx(1.0)
    # hyp "a b c" vs ref "a b d": p1 = 2/3, p2 = (1+1)/(2+1), p3 = (0+1)/(1+1), p4 = (0+1)/(0+1), bp = 0
    expected = math.exp((math.log(2 / 3) + math.log(2 / 3) + math.log(1 / 2) + math.log(1)) / 4)
    assert smoothed_sentence_bleu("a b c", "a b d") == pytest.approx(expected)
    metric = SmoothedBLEU4()
    metric.update(["a b c", "add two numbers"], ["a b d", "add two numbers"])
    assert float(metric.compute()) == pytest.approx(100 * (expected + 1) / 2, rel=1e-5)
    em = ExactMatch()
    em.update(["x  y", "z"], ["x y", "w"])
    assert float(em.compute()) == 0.5
    with pytest.raises(ValueError, match="references"):
        metric.update(["a"], [])


# ---------------------------------------------------------------------- module
def test_forward_shapes_and_clear_errors():
    model = CodeT5Module(**TINY).eval()
    batch = model.example_batch(3)
    out = model(batch)
    assert out["logits"].shape == (3, 6, 512) and out["it_logits"].shape == (3, 12)
    assert torch.equal(model(batch)["logits"], out["logits"])
    with pytest.raises(ConfigError, match="vocab_size"):
        model({**batch, "input_ids": batch["input_ids"] + 600})
    with pytest.raises(ConfigError, match="objective"):
        model.objective_loss({**batch, "objective": "nsp"})
    with pytest.raises(ConfigError, match="dict batch"):
        model(batch["input_ids"])
    with pytest.raises(ConfigError, match="tie_word_embeddings"):
        CodeT5Module(**{**TINY, "tie_word_embeddings": False})
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        CodeT5Module(**{**TINY, "feed_forward_proj": "swish"})
    with pytest.raises(ConfigError, match="tokenizer"):
        model.summarize("def f(): pass")


@pytest.mark.parametrize("objective", ["msp", "it"])
def test_loss_falls_when_overfitting_one_batch(objective):
    torch.manual_seed(0)
    model = CodeT5Module(**TINY)
    batch = {**model.example_batch(4), "objective": objective}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model.objective_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def codexglue_files(tmp_path_factory):
    """Local files in the google/code_x_glue_ct_code_to_text schema (train / valid / test jsonl)."""
    folder = tmp_path_factory.mktemp("cxg")
    base = [("add", "Add two numbers together", "def add(a, b):\n    return a + b\n"),
            ("mul", "Multiply two values now", "def mul(x, y):\n    return x * y\n"),
            ("neg", "Negate the given number", "def neg(n):\n    return -n\n"),
            ("pow", "Raise a base to power", "def pow(b, e):\n    return b ** e\n")]
    for split, n in (("train", 24), ("valid", 4), ("test", 4)):
        with open(folder / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                name, doc, code = base[i % 4]
                fh.write(json.dumps({"repo": "r", "path": f"{split}/{i}.py", "func_name": name, "language": "python",
                                     "original_string": code, "code": code, "code_tokens": code.split(),
                                     "docstring": doc, "docstring_tokens": doc.split(), "partition": split}) + "\n")
    return folder


def test_local_codexglue_files_load_and_batch(codexglue_files, tmp_path):
    data = CodeSummarizationData(source=str(codexglue_files), batch_size=4, max_length=32, max_target_length=32,
                                 tokenizer_vocab_size=300, tokenizer_min_frequency=1, cache_dir=str(tmp_path))
    data.setup("fit")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 24, "validation": 4, "test": 4}
    batch = next(iter(data.train_dataloader()))
    assert batch["objective"] == "seq2seq" and batch["input_ids"].shape[0] == 4
    assert (batch["labels"] == IGNORE).any() or batch["labels"].min() >= 0
    assert data.tokenizer.decode(batch["labels"][0].clamp(min=0), skip_special_tokens=True) in {
        "Add two numbers together", "Multiply two values now", "Negate the given number", "Raise a base to power"}
    with pytest.raises(ConfigError, match="does not exist"):
        CodeSummarizationData(source="./no/such/dir.jsonl").load_source()
    with pytest.raises(ConfigError, match="direction"):
        CodeSummarizationData(direction="sideways")
    with pytest.raises(ConfigError, match="objective"):
        CodePretrainData(objectives=["msp", "nsp"])


@pytest.fixture(scope="module")
def stdlib_splits():
    return CodePretrainData().load_source()


def test_embedded_stdlib_split_by_file_is_leak_free(stdlib_splits):
    groups = {name: set(split["group"]) for name, split in stdlib_splits.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    assert not groups["validation"] & groups["test"]
    assert len(stdlib_splits["train"]) > 5000 and len(stdlib_splits["test"]) > 300
    with_doc = [r for r in stdlib_splits["test"].select(range(200)) if r["docstring"]]
    assert with_doc and all(r["docstring"] not in r["code_nodoc"] for r in with_doc)  # target never in the input


def test_pretraining_fit_and_validate_measure_every_objective(stdlib_splits, tmp_path):
    data = CodePretrainData(batch_size=4, max_length=64, max_target_length=32, tokenizer_vocab_size=400,
                            limit=24, cache_dir=str(tmp_path))
    model = CodeT5Module(**TINY)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(model, data)
    assert model.tokenizer is data.tokenizer
    seen = set()
    for _, batch in zip(range(12), data.train_dataloader()):
        seen.add(batch["objective"])
    assert seen == {"msp", "it", "mip"}  # chosen per batch, uniformly
    metrics = trainer.validate(model, data, verbose=False)[0]
    assert {"val/msp_accuracy", "val/mip_exact_match", "val/it_f1"} <= set(metrics)
    first = next(iter(data.val_dataloader()))
    again = next(iter(data.val_dataloader()))
    assert torch.equal(first["msp"]["input_ids"], again["msp"]["input_ids"])  # evaluation masks are fixed


# ---------------------------------------------------------------------- converter parity
def _upstream_folder(tmp_path, tokenizer, fmt="bin"):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=len(tokenizer) - len(LANGUAGE_TOKENS), d_model=32, d_ff=64, d_kv=8, num_layers=2,
                      num_heads=4, feed_forward_proj="relu", decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(config).eval()
    config.to_json_file(tmp_path / "config.json")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    if fmt == "bin":
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items() if k not in ("encoder.embed_tokens.weight",
                                                                           "decoder.embed_tokens.weight",
                                                                           "lm_head.weight")},
                  tmp_path / "model.safetensors")  # tied copies left out, as safetensors exports do
    return reference


def test_converter_parity_on_upstream_layout(tmp_path, tokenizer):
    reference = _upstream_folder(tmp_path, tokenizer)
    tokenizer.backend_tokenizer.model.save(str(tmp_path))  # vocab.json + merges.txt, as upstream ships
    module = convert_codet5(tmp_path)
    ids = torch.tensor([tokenizer(CODE)["input_ids"][:20]])
    labels = torch.tensor([[1, 40, 41, 42, 2]])
    expected = reference(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).logits
    got = module({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert module.tokenizer is not None and module.tokenizer.convert_tokens_to_ids("<extra_id_0>") < 512
    assert module.tokenizer(CODE)["input_ids"] == tokenizer(CODE)["input_ids"]


def test_converter_reads_safetensors_and_refuses_partial_loads(tmp_path, tokenizer):
    reference = _upstream_folder(tmp_path, tokenizer, fmt="safetensors")
    module = convert_codet5(tmp_path)
    assert module.tokenizer is None  # task checkpoints ship no tokenizer
    ids = torch.tensor([[1, 50, 60, 2]])
    torch.testing.assert_close(module({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                       "labels": ids})["logits"],
                               reference(input_ids=ids, labels=ids).logits, atol=1e-5, rtol=1e-5)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state.pop("encoder.final_layer_norm.weight")
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(KeyMismatchError, match="missing: encoder.final_layer_norm.weight") as err:
        convert_codet5(tmp_path)
    assert err.value.unexpected == ["encoder.extra.weight"]
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match="neither"):
        convert_codet5(tmp_path)


def test_converter_refuses_pickles_with_code(tmp_path, tokenizer):
    _upstream_folder(tmp_path, tokenizer)
    torch.save({"shared.weight": torch.zeros(2), "payload": ConfigError("not a tensor")},
               tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="not a plain tensor state dict"):
        convert_codet5(tmp_path)


# ---------------------------------------------------------------------- bimodal dual generation
class _FixedDraw:
    """Stands in for the data module's generator: ``random()`` picks the dual-generation direction."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


def test_dual_generation_puts_language_id_first_in_both_directions(tokenizer):
    data = CodePretrainData(objectives=["dual"], max_length=64, max_target_length=32)
    data.tokenizer = tokenizer
    code_nodoc = "def add_numbers(first, second):\n    total = first + second\n    return total\n"
    features = data.tokenize({"code": [CODE, SNIPPETS[1]], "language": ["python", "python"],
                              "docstring": ["Add two numbers.", ""], "code_nodoc": [code_nodoc, SNIPPETS[1]]})
    rows = [dict(zip(features, values)) for values in zip(*features.values())]
    assert [r["has_doc"] for r in rows] == [True, False]  # only NL-PL pairs train dual generation
    en, python = tokenizer.convert_tokens_to_ids(["<en>", "<python>"])
    code_ids = tokenizer(code_nodoc)["input_ids"]
    nl_ids = tokenizer("Add two numbers.")["input_ids"]

    pl2nl = data.objective_batch(rows, "dual", _FixedDraw(0.1))  # PL -> NL
    assert pl2nl["objective"] == "dual" and pl2nl["input_ids"].shape[0] == 1
    assert pl2nl["input_ids"][0].tolist() == code_ids
    assert pl2nl["labels"][0].tolist() == [nl_ids[0], en] + nl_ids[1:]  # <s> <en> add two numbers . </s>
    assert tokenizer.decode(pl2nl["labels"][0][2:], skip_special_tokens=True) == "Add two numbers."

    nl2pl = data.objective_batch(rows, "dual", _FixedDraw(0.9))  # NL -> PL
    assert nl2pl["input_ids"][0].tolist() == nl_ids
    assert nl2pl["labels"][0].tolist() == [code_ids[0], python] + code_ids[1:]
    assert tokenizer.decode(nl2pl["labels"][0][2:], skip_special_tokens=True) == code_nodoc

    no_pairs = data.objective_batch(rows[1:], "dual", np.random.default_rng(0))
    assert no_pairs["objective"] == "msp"  # nothing to translate: falls back to span denoising

    model = CodeT5Module(**TINY)
    assert len(tokenizer) <= TINY["vocab_size"]
    for batch in (pl2nl, nl2pl):
        loss = model.objective_loss(batch)
        assert torch.isfinite(loss) and loss > 0

    summ = CodeSummarizationData(direction="nl2pl", language_ids=True, max_length=64, max_target_length=32)
    summ.tokenizer = tokenizer
    out = summ.tokenize({"code_nodoc": [code_nodoc], "docstring": ["Add two numbers."], "language": ["python"]})
    assert out["labels"][0][:2] == [code_ids[0], python] and out["labels"][0][2:] == code_ids[1:]
