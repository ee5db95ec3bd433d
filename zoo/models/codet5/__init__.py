"""Family codet5: CodeT5 (Wang et al., EMNLP 2021), identifier-aware pre-trained encoder-decoder for code."""

from zoo.models.codet5.convert import UPSTREAM, convert_codet5
from zoo.models.codet5.data import CodePretrainData, CodeSummarizationData, CodeT5Data
from zoo.models.codet5.module import CodeT5Module
from zoo.registry import ModelEntry, Paper, register, register_datamodule

PAPER = Paper(
    title="CodeT5: Identifier-aware Unified Pre-trained Encoder-Decoder Models for Code Understanding and Generation",
    arxiv="2109.00859",
    authors="Yue Wang, Weishi Wang, Shafiq Joty, Steven C.H. Hoi",
    venue="EMNLP 2021",
    code_url="https://github.com/salesforce/CodeT5",
    bibtex="""@inproceedings{wang2021codet5,
  title={CodeT5: Identifier-aware Unified Pre-trained Encoder-Decoder Models for Code Understanding and Generation},
  author={Wang, Yue and Wang, Weishi and Joty, Shafiq and Hoi, Steven C.H.},
  booktitle={Proceedings of the 2021 Conference on Empirical Methods in Natural Language Processing},
  pages={8696--8708},
  year={2021}
}""",
)

#: the tiny variant: ~1.2M parameters, a 4k byte-level BPE, trains on CPU in minutes
TINY = {"vocab_size": 4160, "d_model": 128, "d_ff": 256, "d_kv": 32, "num_layers": 2, "num_heads": 4,
        "dropout_rate": 0.0, "num_beams": 4, "max_target_length": 32}
SMALL = {"vocab_size": 32100, "d_model": 512, "d_ff": 2048, "d_kv": 64, "num_layers": 6, "num_heads": 8}
BASE = {"vocab_size": 32100, "d_model": 768, "d_ff": 3072, "d_kv": 64, "num_layers": 12, "num_heads": 12}
LARGE = {"vocab_size": 32100, "d_model": 1024, "d_ff": 4096, "d_kv": 64, "num_layers": 24, "num_heads": 16}

_COMMON = dict(family="codet5", module_class=CodeT5Module, datamodule_class=CodePretrainData, paper=PAPER,
               license="apache-2.0", tags=("code", "text2text-generation", "t5"))

register(ModelEntry(name="codet5-tiny", variant="tiny", config=TINY, default=True,
                    config_file="configs/codet5/tiny-pretrain.yaml",
                    description="tiny CodeT5 for CPU runs on the Python standard library", **_COMMON))
register(ModelEntry(name="codet5-small", variant="small", config=SMALL, upstream=UPSTREAM["codet5-small"],
                    config_file="configs/codet5/paper-small.yaml",
                    description="CodeT5-small (60.5M): 6+6 layers, d_model 512", **_COMMON))
register(ModelEntry(name="codet5-base", variant="base", config=BASE, upstream=UPSTREAM["codet5-base"],
                    config_file="configs/codet5/paper-base.yaml",
                    description="CodeT5-base (222.9M): 12+12 layers, d_model 768", **_COMMON))
register(ModelEntry(name="codet5-large", variant="large", config=LARGE, upstream=UPSTREAM["codet5-large"],
                    description="CodeT5-large (770M, Le et al. 2022 CodeRL): 24+24 layers, d_model 1024", **_COMMON))
register_datamodule("codet5_pretrain", CodePretrainData)
register_datamodule("code_summarization", CodeSummarizationData)

__all__ = ["CodeT5Module", "CodeT5Data", "CodePretrainData", "CodeSummarizationData", "PAPER", "convert_codet5"]
