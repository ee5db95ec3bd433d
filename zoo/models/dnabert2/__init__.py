"""DNABERT-2 (Zhou et al., ICLR 2024): BPE DNA tokenizer, ALiBi + GEGLU BERT encoder, GUE-style fine-tuning."""

from zoo.models.dnabert2.convert import REPO_ID, REVISION, convert_dnabert2
from zoo.models.dnabert2.data import DnaClassificationData, DnaPretrainData
from zoo.models.dnabert2.model import DnaBert2Config
from zoo.models.dnabert2.module import DnaBert2ForMaskedLM, DnaBert2ForSequenceClassification
from zoo.registry import ModelEntry, Paper, UpstreamCheckpoint, register, register_datamodule

__all__ = ["DnaBert2Config", "DnaBert2ForMaskedLM", "DnaBert2ForSequenceClassification", "DnaClassificationData",
           "DnaPretrainData", "convert_dnabert2"]

PAPER = Paper(
    title="DNABERT-2: Efficient Foundation Model and Benchmark for Multi-Species Genome",
    arxiv="2306.15006",
    authors="Zhihan Zhou, Yanrong Ji, Weijian Li, Pratik Dutta, Ramana Davuluri, Han Liu",
    venue="ICLR 2024",
    code_url="https://github.com/MAGICS-LAB/DNABERT_2",
    bibtex="""@inproceedings{zhou2024dnabert2,
  title={{DNABERT}-2: Efficient Foundation Model and Benchmark For Multi-Species Genomes},
  author={Zhou, Zhihan and Ji, Yanrong and Li, Weijian and Dutta, Pratik and Davuluri, Ramana V and Liu, Han},
  booktitle={The Twelfth International Conference on Learning Representations},
  year={2024}
}""",
)

TINY = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "alibi_starting_size": 128}
UPSTREAM = UpstreamCheckpoint(
    repo_id=REPO_ID, revision=REVISION, model="dnabert2-117m", converter=convert_dnabert2,
    files=("config.json", "model.safetensors", "tokenizer.json"), optional_files=("tokenizer_config.json",),
    license="apache-2.0", description="the paper's 117M model pre-trained on 135 species (MLM head)",
)

register(ModelEntry(
    name="dnabert2-tiny", family="dnabert2", variant="tiny", module_class=DnaBert2ForMaskedLM,
    datamodule_class=DnaPretrainData, config={"config": TINY}, paper=PAPER, license="apache-2.0",
    tags=("dna", "genomics"), config_file="configs/dnabert2/tiny-mlm.yaml", default=True,
    description="2-layer, 64-wide DNABERT-2 for CPU pre-training on the embedded genomes",
))
register(ModelEntry(
    name="dnabert2-tiny-classify", family="dnabert2", variant="tiny-classify",
    module_class=DnaBert2ForSequenceClassification, datamodule_class=DnaClassificationData,
    config={"config": TINY, "num_labels": 2}, paper=PAPER, license="apache-2.0", tags=("dna", "genomics"),
    config_file="configs/dnabert2/tiny-classify.yaml",
    description="tiny DNABERT-2 with the pooled-[CLS] classification head (MCC, macro-F1, accuracy)",
))
register(ModelEntry(
    name="dnabert2-117m", family="dnabert2", variant="117m", module_class=DnaBert2ForMaskedLM,
    datamodule_class=DnaPretrainData, config={"config": {}}, paper=PAPER, license="apache-2.0",
    tags=("dna", "genomics"), config_file="configs/dnabert2/paper.yaml", upstream=(UPSTREAM,),
    description="the paper's size: 12 layers, 768 wide, 12 heads, BPE vocabulary 4096",
))
register_datamodule("dna_pretrain", DnaPretrainData)
register_datamodule("dna_classification", DnaClassificationData)
