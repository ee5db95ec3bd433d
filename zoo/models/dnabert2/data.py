"""Real-DNA data for DNABERT-2: MLM pre-training windows and labelled classification tasks.

Embedded source: the bacterial genomes that the ``pyrodigal`` wheel (GPL-3.0, a declared
dependency) installs in ``pyrodigal/tests/data``; they are read from the installed package, never
copied here. Gene coordinates for the labelled tasks come from running pyrodigal's gene finder on
them (the closed-end training file it ships for C. diphtheriae, self-training for the E. coli contig).

Splits are leak-free: every window is grouped by the genome block (``block_bp``) its start falls in
and windows that cross a block edge are dropped, so no base is ever in two splits.
Any other source is the GUE CSV layout (``sequence,label`` in train/dev/test files) or a hub id.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from typing import Any

import datasets
import torch

from zoo.core.data import ZooDataModule, pad_sequences
from zoo.errors import ConfigError
from zoo.models.dnabert2.tokenizer import SPECIAL_TOKENS, Scheme, encode_dna, make_tokenizer, scheme_of

#: name -> (file in pyrodigal/tests/data, organism)
GENOMES = {
    "c_diphtheriae": ("GCF_001457455.1_NCTC11397_genomic.fna.gz", "Corynebacterium diphtheriae NCTC11397 chromosome"),
    "e_coli": ("MIIJ01000039.fna.gz", "Escherichia coli contig MIIJ01000039"),
    "srr492066": ("SRR492066.fna.gz", "metagenomic contig SRR492066 NODE_23 (low-GC, Mycoplasma-like)"),
    "kutzneria": ("KK037166.fna.gz", "Kutzneria sp. 744 scaffold KK037166"),
}
TASKS = ("coding", "species", "strand", "frame")
#: bump when build_task or tile change, so cached datasets are rebuilt
DATA_VERSION = 3
EMBEDDED_DESCRIPTION = "real bacterial genomes shipped in the pyrodigal wheel (pyrodigal/tests/data, GPL-3.0)"


def _data_file(name: str):
    try:
        return resources.files("pyrodigal.tests.data").joinpath(name)
    except ModuleNotFoundError as err:
        raise ConfigError("the embedded DNA data is read from the pyrodigal wheel: `pip install pyrodigal`, "
                          "or pass source=<folder with train/dev/test CSV files (sequence,label)>") from err


def read_genome(name: str) -> str:
    """One genome (all FASTA records concatenated with an N spacer), upper-case."""
    if name not in GENOMES:
        raise ConfigError(f"unknown genome {name!r}; embedded genomes: {sorted(GENOMES)}")
    with _data_file(GENOMES[name][0]).open("rb") as raw, gzip.open(raw, "rt") as fh:
        records, current = [], []
        for line in fh:
            if line.startswith(">"):
                if current:
                    records.append("".join(current))
                current = []
            else:
                current.append(line.strip())
        records.append("".join(current))
    return "N".join(records).upper()


def find_genes(name: str, sequence: str) -> list[tuple[int, int, int]]:
    """(start, end, strand) of predicted CDS, 0-based half-open, from pyrodigal."""
    import pyrodigal

    if name == "c_diphtheriae":  # the wheel ships this genome's trained model: no self-training needed
        with _data_file("GCF_001457455.1_NCTC11397_genomic.tinf_closed.bin").open("rb") as fh:
            finder = pyrodigal.GeneFinder(pyrodigal.TrainingInfo.load(fh), closed=True)
    else:
        finder = pyrodigal.GeneFinder(closed=True)
        finder.train(sequence.encode())
    return [(g.begin - 1, g.end, g.strand) for g in finder.find_genes(sequence.encode())]


def _keep(key: str, seed: int, fraction: float) -> bool:
    return int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


def tile(genome: str, sequence: str, window_bp: int, block_bp: int, start: int = 0, end: int | None = None,
         stride: int | None = None):
    """Windows inside [start, end) that never cross a block edge, with their leak-free group."""
    end = len(sequence) if end is None else end
    stride = stride or window_bp
    pos = start
    while pos + window_bp <= end:
        block = pos // block_bp
        if (pos + window_bp - 1) // block_bp == block and "N" not in sequence[pos: pos + window_bp]:
            yield pos, sequence[pos: pos + window_bp], f"{genome}:{block}"
        pos += stride


def build_task(task: str, window_bp: int, block_bp: int, seed: int, max_bp: int | None = None) -> dict[str, list]:
    """Balanced labelled windows for a real-label task.

    coding:  window inside a predicted CDS (1) vs in an intergenic stretch touching no CDS (0)
    species: C. diphtheriae (0) vs E. coli (1) windows of the same length (GC 53% vs 51%)
    strand:  coding window read on the CDS's strand (1) vs its reverse complement (0), i.e. gene orientation
    frame:   coding window read in the gene's direction; label = its first base's codon position (0, 1, 2).
             k-mer counts are nearly blind to it (a shift changes only the ends), so it needs order
    """
    if task not in TASKS:
        raise ConfigError(f"unknown embedded task {task!r}; choose one of {list(TASKS)}")
    rows: dict[str, list] = {"sequence": [], "label": [], "group": []}
    if task == "species":
        tiles = {g: list(tile(g, read_genome(g)[:max_bp], window_bp, block_bp)) for g in ("c_diphtheriae", "e_coli")}
        n = min(len(t) for t in tiles.values())
        for label, genome in enumerate(("c_diphtheriae", "e_coli")):
            chosen = [t for t in tiles[genome] if _keep(f"{t[0]}", seed, n / len(tiles[genome]))]
            for _, seq, group in chosen:
                rows["sequence"].append(seq), rows["label"].append(label), rows["group"].append(group)
        return rows
    coding, noncoding = [], []
    for genome in ("c_diphtheriae", "e_coli"):
        sequence = read_genome(genome)[:max_bp]
        genes = sorted(find_genes(genome, sequence))
        covered = bytearray(len(sequence))
        for start, end, _ in genes:
            covered[start:end] = b"\x01" * (end - start)
        # a stride that is a multiple of 3 would start every window in the same codon position
        stride = window_bp + 1 if window_bp % 3 == 0 else window_bp
        for start, end, strand in genes:
            for pos, seq, group in tile(genome, sequence, window_bp, block_bp, start, end, stride=stride):
                frame = (pos - start) % 3 if strand == 1 else (end - pos - window_bp) % 3
                coding.append((seq, strand, group, f"{genome}:{pos}", frame))
        gap_start = None
        for pos in range(len(sequence) + 1):  # maximal intergenic stretches
            inside = pos < len(sequence) and not covered[pos]
            if inside and gap_start is None:
                gap_start = pos
            elif not inside and gap_start is not None:
                noncoding.extend((s, 0, g, f"{genome}:{p}") for p, s, g in
                                 tile(genome, sequence, window_bp, block_bp, gap_start, pos, stride=window_bp // 2))
                gap_start = None
    if task == "coding":
        fraction = len(noncoding) / max(1, len(coding))
        picked = [(s, 1, g) for s, _, g, key, _ in coding if _keep(key, seed, fraction)]
        picked += [(s, 0, g) for s, _, g, _ in noncoding]
    elif task == "frame":
        picked = [(s if strand == 1 else reverse_complement(s), frame, g)
                  for s, strand, g, key, frame in coding if _keep(key, seed + 3, 0.4)]
    else:
        picked = []
        for seq, strand, group, key, _ in coding:
            if not _keep(key, seed + 1, 0.25):
                continue
            forward = seq if strand == 1 else reverse_complement(seq)
            flip = _keep(key, seed + 2, 0.5)  # half the windows shown against the gene's direction
            picked.append((reverse_complement(forward) if flip else forward, 0 if flip else 1, group))
    for seq, label, group in picked:
        rows["sequence"].append(seq), rows["label"].append(int(label)), rows["group"].append(group)
    return rows


def reverse_complement(seq: str) -> str:
    return seq.translate(str.maketrans("ACGTN", "TGCAN"))[::-1]


def mask_tokens(input_ids: torch.Tensor, vocab_size: int, probability: float = 0.15, span: int = 1,
                generator: torch.Generator | None = None, special_ids: int = len(SPECIAL_TOKENS)):
    """BERT masking (80% [MASK], 10% random, 10% kept) of ``probability`` of the real tokens.

    ``span > 1`` masks contiguous runs of ``span`` tokens (DNABERT's rule for overlapping k-mers:
    a single masked k-mer is trivially recovered from its overlapping neighbours).
    Returns (masked input ids, labels with -100 on unmasked positions).
    """
    candidates = input_ids >= special_ids  # ids 0-4 are [UNK] [CLS] [SEP] [PAD] [MASK]
    rand = torch.rand(input_ids.shape, generator=generator)
    if span > 1:
        starts = (rand < probability / span) & candidates
        # position t is masked when a span started at any of t-span+1 .. t
        padded = torch.nn.functional.pad(starts.float()[:, None], (span - 1, 0))
        selected = torch.nn.functional.max_pool1d(padded, span, stride=1)[:, 0].bool() & candidates
    else:
        selected = (rand < probability) & candidates
    if not selected.any() and candidates.any():  # every batch needs at least one target
        selected.view(-1)[candidates.view(-1).nonzero()[0]] = True
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[selected & (action < 0.8)] = SPECIAL_TOKENS.index("[MASK]")
    randomize = selected & (action >= 0.8) & (action < 0.9)
    masked[randomize] = torch.randint(special_ids, vocab_size, (int(randomize.sum()),), generator=generator)
    return masked, labels


class _DnaData(ZooDataModule):
    """Shared tokenizer handling: the model's tokenizer when it has one, else train/make ``tokenizer``."""

    def __init__(self, tokenizer: Scheme = "bpe", vocab_size: int = 4096, k: int = 6, window_bp: int = 200,
                 block_bp: int = 10_000, genome_bp: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if window_bp > block_bp:
            raise ConfigError(f"window_bp={window_bp} > block_bp={block_bp}: windows would cross split blocks")
        self.tokenizer_scheme = tokenizer
        self.vocab_size = vocab_size
        self.k = k
        self.window_bp = window_bp
        self.block_bp = block_bp
        self.genome_bp = genome_bp

    def build_tokenizer(self, train: datasets.Dataset):
        return make_tokenizer(self.tokenizer_scheme, train["sequence"], vocab_size=self.vocab_size, k=self.k)

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        out = encode_dna(self.tokenizer, batch["sequence"], max_length=self.max_length)
        if "label" in batch:
            out["label"] = [int(x) for x in batch["label"]]
        return out

    def _pad(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = pad_sequences([r["input_ids"] for r in rows], SPECIAL_TOKENS.index("[PAD]"))
        return {"input_ids": ids, "attention_mask": (ids != SPECIAL_TOKENS.index("[PAD]")).long()}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        scheme, k = scheme_of(self.tokenizer) if self.tokenizer is not None else (self.tokenizer_scheme, self.k)
        info.update(tokenizer=scheme, k=k or None, window_bp=self.window_bp)
        return info


class DnaPretrainData(_DnaData):
    """MLM windows tiled from real genomes (embedded) or a ``sequence`` column of local files."""

    dataset_name = EMBEDDED_DESCRIPTION
    required_columns = ("sequence",)

    def __init__(self, genomes: list[str] | None = None, mlm_probability: float = 0.15, **kwargs: Any):
        super().__init__(**kwargs)
        self.genomes = list(genomes or ["c_diphtheriae", "e_coli"])
        unknown = sorted(set(self.genomes) - set(GENOMES))
        if unknown:
            raise ConfigError(f"unknown genome(s) {unknown}; embedded genomes: {sorted(GENOMES)}")
        if not 0 < mlm_probability < 1:
            raise ConfigError(f"mlm_probability={mlm_probability} must be in (0, 1); BERT uses 0.15")
        self.mlm_probability = mlm_probability

    def build_embedded(self) -> datasets.Dataset:
        def build():
            rows: dict[str, list] = {"sequence": [], "group": []}
            for genome in self.genomes:
                for _, seq, group in tile(genome, read_genome(genome)[: self.genome_bp], self.window_bp, self.block_bp):
                    rows["sequence"].append(seq), rows["group"].append(group)
            return datasets.Dataset.from_dict(rows)

        key = [DATA_VERSION, self.genomes, self.window_bp, self.block_bp, self.genome_bp]
        return self.cached("pretrain", key, build)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._pad(rows)
        scheme, k = scheme_of(self.tokenizer)
        # masks depend only on the batch's content and the seed, so validation loss is reproducible
        seed = int(hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest()[:8], 16) + self.seed
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], len(self.tokenizer), self.mlm_probability,
            span=k if scheme == "kmer_overlap" else 1, generator=torch.Generator().manual_seed(seed))
        return batch


class DnaClassificationData(_DnaData):
    """Labelled DNA windows: an embedded real-label task, or GUE-style CSVs (``sequence,label``)."""

    required_columns = ("sequence", "label")

    def __init__(self, task: str = "coding", **kwargs: Any):
        kwargs.setdefault("window_bp", 100)
        kwargs.setdefault("max_length", 128)
        super().__init__(**kwargs)
        if self.source == "embedded" and task not in TASKS:
            raise ConfigError(f"unknown embedded task {task!r}; choose one of {list(TASKS)} "
                              "or pass source=<GUE-style folder>")
        self.task = task

    @property
    def dataset_name(self) -> str:  # type: ignore[override]
        return f"{self.task} windows from {EMBEDDED_DESCRIPTION}"

    def build_embedded(self) -> datasets.Dataset:
        key = [DATA_VERSION, self.task, self.window_bp, self.block_bp, self.seed, self.genome_bp]
        return self.cached(self.task, key, lambda: datasets.Dataset.from_dict(
            build_task(self.task, self.window_bp, self.block_bp, self.seed, self.genome_bp)))

    def num_labels(self) -> int:
        return len(set(self.load_source()["train"]["label"]))

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._pad(rows)
        batch["labels"] = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
        return batch
