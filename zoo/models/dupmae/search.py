"""Search with a DupMAE encoder: encode a corpus, encode queries, return top-k with scores.

Representations (``representation=``):

- ``cls``: the [CLS] vector (optionally through the model's learned dense reduction);
- ``mean``: mean of the last hidden states over non-pad tokens;
- ``ot``: the ordinary-token sparse vector, max_i log(1 + ReLU(W h_i)) over the vocabulary, keeping
  only its ``top_k_terms`` largest entries (stored sparse);
- ``unified``: [CLS] and OT concatenated, so its inner product is s_cls + s_ot. The paper reduces
  and aggregates both before concatenating but never released how (upstream issue #29); here the
  reduction is the optional learned linear map of [CLS] plus top-k truncation of OT, and with
  ``similarity="cosine"`` each part is L2-normalised first so that both weigh the same.

Metrics are torchmetrics retrieval metrics: MRR@10, nDCG@10 and Recall@k.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from zoo.errors import ConfigError

REPRESENTATIONS = ("cls", "mean", "ot", "unified")


def check_representation(name: str) -> str:
    if name not in REPRESENTATIONS:
        raise ConfigError(f"unknown representation {name!r}; choose one of {list(REPRESENTATIONS)}")
    return name


def top_k_sparse(ot: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest entries of each row (the rest set to 0); k=None keeps everything."""
    if k is None or k >= ot.shape[-1]:
        return ot
    values, index = ot.topk(k, dim=-1)
    return torch.zeros_like(ot).scatter_(-1, index, values)


def combine(vectors: dict[str, torch.Tensor], representation: str, similarity: str,
            top_k_terms: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dense part, sparse OT part or None) of a representation; score = <dense, dense'> + <ot, ot'>."""
    check_representation(representation)
    norm = (lambda x: F.normalize(x, dim=-1)) if similarity == "cosine" else (lambda x: x)
    if representation in ("cls", "mean"):
        return norm(vectors[representation]), None
    ot = norm(top_k_sparse(vectors["ot"], top_k_terms))
    if representation == "ot":
        return None, ot
    return norm(vectors["cls"]), ot


def pair_scores(query: tuple[torch.Tensor | None, torch.Tensor | None],
                docs: tuple[torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
    """[Q, N] inner products of combined representations (dense and sparse parts added)."""
    total = None
    for q, d in zip(query, docs):
        if q is None:
            continue
        part = (d @ q.T).T if d.is_sparse or d.layout == torch.sparse_csr else q @ d.T
        total = part if total is None else total + part
    return total


def retrieval_metrics(scores: torch.Tensor, relevant: torch.Tensor, recall_at: Sequence[int] = (1, 10, 100)) -> dict:
    """MRR@10, nDCG@10 and Recall@k (torchmetrics) from a [Q, N] score matrix and [Q, N] bool relevance."""
    if scores.shape != relevant.shape:
        raise ConfigError(f"scores {tuple(scores.shape)} and relevance {tuple(relevant.shape)} differ in shape")
    indexes = torch.arange(scores.shape[0]).unsqueeze(1).expand_as(scores).reshape(-1)
    preds, target = scores.reshape(-1).float(), relevant.reshape(-1)
    out = {"mrr": RetrievalMRR(top_k=10)(preds, target, indexes=indexes).item(),
           "ndcg": RetrievalNormalizedDCG(top_k=10)(preds, target, indexes=indexes).item()}
    for k in recall_at:
        out[f"recall@{k}"] = RetrievalRecall(top_k=k)(preds, target, indexes=indexes).item()
    return out


@dataclass
class Hit:
    doc_id: str
    score: float
    text: str


class SearchIndex:
    """An in-memory index of a corpus encoded by a ``DupMAE`` module.

        >>> index = SearchIndex(model, representation="unified")        # doctest: +SKIP
        >>> index.add(["def add(a, b): return a + b", ...])             # doctest: +SKIP
        >>> index.search(["Return the sum of two numbers."], k=5)       # doctest: +SKIP
    """

    def __init__(self, model, representation: str = "unified", top_k_terms: int | None = None,
                 batch_size: int = 64, max_length: int = 256, query_max_length: int = 64):
        if model.tokenizer is None:
            raise ConfigError("the model has no tokenizer; attach one (model.attach_tokenizer(tok)) or load a "
                              "trained model with zoo.from_pretrained before building a SearchIndex")
        self.model = model
        self.representation = check_representation(representation)
        self.top_k_terms = model.top_k_terms if top_k_terms is None else top_k_terms
        self.batch_size = batch_size
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._dense: list[torch.Tensor] = []
        self._sparse: list[torch.Tensor] = []

    def _encode(self, texts: Sequence[str], max_length: int):
        dense, sparse = [], []
        for start in range(0, len(texts), self.batch_size):
            vectors = self.model.encode_texts(texts[start:start + self.batch_size], max_length=max_length)
            d, s = combine(vectors, self.representation, self.model.similarity, self.top_k_terms)
            dense.append(d)
            with warnings.catch_warnings():  # torch flags sparse CSR as beta; the product used here is stable
                warnings.simplefilter("ignore", UserWarning)
                sparse.append(s.to_sparse_csr() if s is not None else None)
        return dense, sparse

    def add(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> "SearchIndex":
        if isinstance(texts, str):
            raise ConfigError("add() takes a list of documents, not one string; wrap it: add([text])")
        ids = [str(len(self.ids) + i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(texts):
            raise ConfigError(f"add() got {len(texts)} texts but {len(ids)} ids; pass one id per text")
        dense, sparse = self._encode(list(texts), self.max_length)
        self._dense += dense
        self._sparse += sparse
        self.ids += ids
        self.texts += list(texts)
        return self

    def _doc_parts(self):
        dense = torch.cat(self._dense) if self._dense and self._dense[0] is not None else None
        sparse = None
        if self._sparse and self._sparse[0] is not None:
            sparse = torch.cat([s.to_sparse_coo() for s in self._sparse]).coalesce()
        return dense, sparse

    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        """[Q, N] scores of every query against every indexed document."""
        if not self.ids:
            raise ConfigError("the index is empty; call add(documents) before searching")
        dense_q, sparse_q = self._encode(list(queries), self.query_max_length)
        query = (torch.cat(dense_q) if dense_q[0] is not None else None,
                 torch.cat([s.to_dense() for s in sparse_q]) if sparse_q[0] is not None else None)
        return pair_scores(query, self._doc_parts())

    def search(self, queries: Sequence[str] | str, k: int = 10) -> list[list[Hit]]:
        """Top-k hits (id, score, text) for each query, best first."""
        if isinstance(queries, str):
            queries = [queries]
        scores = self.scores(queries)
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return [[Hit(self.ids[j], float(s), self.texts[j]) for s, j in zip(row_s.tolist(), row_i.tolist())]
                for row_s, row_i in zip(top.values, top.indices)]

    def evaluate(self, queries: Sequence[str], relevant_ids: Sequence[Sequence[str] | str],
                 recall_at: Sequence[int] = (1, 10, 100)) -> dict:
        """Retrieval metrics of ``queries`` whose relevant documents are ``relevant_ids`` (ids given to add)."""
        position = {doc_id: j for j, doc_id in enumerate(self.ids)}
        relevant = torch.zeros(len(queries), len(self.ids), dtype=torch.bool)
        for i, rel in enumerate(relevant_ids):
            for doc_id in [rel] if isinstance(rel, str) else rel:
                if doc_id not in position:
                    raise ConfigError(f"relevant id {doc_id!r} of query {i} is not in the index; add it first")
                relevant[i, position[doc_id]] = True
        return retrieval_metrics(self.scores(queries), relevant, recall_at)


def bm25_scores(corpus: Sequence[str], queries: Sequence[str]) -> torch.Tensor:
    """[Q, N] BM25 scores (bm25s, Lucene variant, k1=1.5, b=0.75), the lexical reference."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus), stopwords=None, show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(list(queries), stopwords=None, show_progress=False, return_ids=False)
    return torch.from_numpy(np.stack([retriever.get_scores(q) for q in tokens])).float()


def read_corpus(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of a .jsonl corpus (BEIR ``_id``/``title``/``text`` or ``id``/``text``) or a .txt (one per line)."""
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"corpus {path} does not exist; pass a .jsonl (BEIR corpus) or .txt file (one per line)")
    if file.suffix == ".txt":
        texts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [str(i) for i in range(len(texts))], texts
    ids, texts = [], []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            row = json.loads(line)
            ids.append(str(row.get("_id", row.get("id", n))))
            texts.append(" ".join(x for x in (row.get("title") or "", row["text"]) if x))
    return ids, texts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zoo.models.dupmae MODEL CORPUS "query" ...``: top-k hits as JSON lines."""
    import argparse
    import json

    import zoo

    parser = argparse.ArgumentParser(prog="python -m zoo.models.dupmae", description=main.__doc__)
    parser.add_argument("model", help="hub folder or repo id of a dupmae model (zoo export / save_pretrained)")
    parser.add_argument("corpus", help=".jsonl (BEIR corpus layout) or .txt, one document per line")
    parser.add_argument("queries", nargs="+")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--representation", default=None, choices=REPRESENTATIONS,
                        help="default: the model's eval_representation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = zoo.from_pretrained(args.model)
    ids, texts = read_corpus(args.corpus)
    index = SearchIndex(model, representation=args.representation or model.eval_representation).add(texts, ids)
    for query, hits in zip(args.queries, index.search(args.queries, k=args.k)):
        print(json.dumps({"query": query, "hits": [{"id": h.doc_id, "score": round(h.score, 4)} for h in hits]}))
    return 0
