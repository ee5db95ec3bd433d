"""CodeT5's tokenizer: byte-level BPE with CodeT5's special-token layout.

Ids 0..4 are ``<pad> <s> </s> <unk> <mask>`` (as upstream), then the learned BPE merges, then 100
T5 sentinels numbered downwards (``<extra_id_0>`` is the highest, T5's convention), then one
language-id token per language for bimodal dual generation (``<en>``, ``<python>`` ...).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from zoo.errors import ConfigError

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
NUM_SENTINELS = 100
LANGUAGES = ("python", "java", "javascript", "go", "ruby", "php")
LANGUAGE_TOKENS = ("<en>",) + tuple(f"<{lang}>" for lang in LANGUAGES)


def sentinel(k: int) -> str:
    return f"<extra_id_{k}>"


def language_token(language: str) -> str:
    """``"en"`` -> ``<en>``, ``"python"`` -> ``<python>``; unknown languages are refused."""
    token = f"<{language.lower()}>"
    if token not in LANGUAGE_TOKENS:
        raise ConfigError(f"no language-id token for {language!r}; known: {[t[1:-1] for t in LANGUAGE_TOKENS]}")
    return token


def add_codet5_specials(tokenizer: PreTrainedTokenizerFast, languages: bool = True) -> PreTrainedTokenizerFast:
    """Add the 100 sentinels (``<extra_id_99>`` first, so ``<extra_id_0>`` gets the top id) and language ids."""
    extra = [sentinel(k) for k in reversed(range(NUM_SENTINELS))]
    if languages:
        extra += list(LANGUAGE_TOKENS)
    missing = [t for t in extra if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing})
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 32000, min_frequency: int = 3) -> PreTrainedTokenizerFast:
    """Train CodeT5's byte-level BPE on ``texts``; ``vocab_size`` counts the 5 specials but not sentinels."""
    if vocab_size < 256 + len(SPECIALS):
        raise ConfigError(f"tokenizer vocab_size={vocab_size} is below the 256 bytes + 5 specials a byte-level "
                          "BPE needs; use >= 261")
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    # upstream encodes every sequence as <s> ... </s> (RobertaTokenizer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                           special_tokens=[("<s>", 1), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
                                        model_max_length=512)
    return add_codet5_specials(tokenizer)


def sentinel_ids(tokenizer) -> list[int]:
    """Token ids of ``<extra_id_0>`` .. ``<extra_id_99>``, in that order."""
    ids = tokenizer.convert_tokens_to_ids([sentinel(k) for k in range(NUM_SENTINELS)])
    if tokenizer.unk_token_id in ids:
        raise ConfigError("tokenizer lacks T5 sentinels <extra_id_k>; build it with zoo.models.codet5.tokenizer")
    return ids
