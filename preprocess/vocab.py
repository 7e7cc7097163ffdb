"""The WordPiece tokenizer: load one (`vocab.txt` or `tokenizer.json`) or train one on the corpus.

Everything is HuggingFace `tokenizers`; this module only assembles BERT's pipeline (BERT
normalizer, BERT pre-tokenizer, WordPiece with `##` continuations, `[CLS] A [SEP]` template) and
checks that the five special tokens exist, because every later stage relies on their ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertprep.shards.atomic import atomic_write, sha256_file
from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.options import check, option

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True, kw_only=True)
class VocabConfig:
    """The tokenizer to load, or how to train one."""

    vocab: Path | None = option(None, help="Use this BERT vocab.txt instead of training one.")
    tokenizer: Path | None = option(None, help="Use this tokenizers JSON file (its own normalization applies) "
                                    "instead of training one.")
    vocab_size: int = option(30522, at_least=128, at_most=1 << 22, help="Size of the vocab to train.")
    lowercase: bool = option(True, negative="--cased",
                             help="Uncased (lower-case, accents stripped, as BERT uncased) or cased text.")
    min_frequency: int = 2          # a word piece must occur this often to be learned

    def __post_init__(self):
        check(self)
        if self.vocab and self.tokenizer:
            raise ConfigError("give --vocab or --tokenizer, not both")


def _bert_pipeline(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lowercase, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_template(tok: Tokenizer) -> Tokenizer:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def special_ids(tok: Tokenizer, where: str) -> dict[str, int]:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK]; refuses a vocabulary that lacks any of them."""
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise InputError(f"{where}: vocabulary lacks the special tokens {' '.join(missing)} that BERT needs")
    return {t.strip("[]").lower(): i for t, i in ids.items()}


def load_vocab_txt(path: Path, lowercase: bool) -> Tokenizer:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such vocab file") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise InputError(f"{path}: not a readable UTF-8 vocab.txt ({e.__class__.__name__})") from None
    vocab: dict[str, int] = {}
    for line in lines:
        token = line.rstrip("\r\n")
        if token and token not in vocab:
            vocab[token] = len(vocab)
    if not vocab:
        raise InputError(f"{path}: empty vocab file")
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    special_ids(tok, str(path))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return _add_template(_bert_pipeline(tok, lowercase))


def load_tokenizer_json(path: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for unreadable or foreign files
        if not Path(path).exists():
            raise InputError(f"{path}: no such tokenizer file") from None
        raise InputError(f"{path}: not a tokenizers JSON file ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(tok.model, models.WordPiece):
        raise InputError(f"{path}: tokenizer model is {type(tok.model).__name__}, bertprep needs WordPiece")
    special_ids(tok, str(path))
    # Registered as special so that decoding skips them and `[CLS] A [SEP]` templates find them; when
    # tokenizing they are text (reference.encoding_copy sets encode_special_tokens).
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def train_tokenizer(texts: Callable[[], Iterable[str]], cfg: VocabConfig) -> Tokenizer:
    """Learn a WordPiece vocabulary of `cfg.vocab_size`, reproducibly, from a corpus read twice.

    `tokenizers`' trainer gives `##` continuation symbols ids in hash-map order, and those ids break
    ties between equally frequent merges, so two runs can learn different vocabularies
    (huggingface/tokenizers#1794). We fix the ids first: a pass over the text collects its
    characters, and every `##c` is registered, sorted, before training. The learned vocabulary is
    then loaded into a fresh tokenizer so that only BERT's five special tokens are special.
    """
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=cfg.lowercase, lowercase=cfg.lowercase)
    raw_chars: set[str] = set()
    for text in texts():
        raw_chars.update(text)
    chars = sorted(set(normalizer.normalize_str("".join(sorted(raw_chars)))) - set(" \t\n\r"))
    pinned = list(SPECIAL_TOKENS) + [f"##{c}" for c in chars]
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)), cfg.lowercase)
    trainer = trainers.WordPieceTrainer(vocab_size=max(cfg.vocab_size, len(pinned) + len(chars)),
                                        min_frequency=cfg.min_frequency, special_tokens=pinned,
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(texts(), trainer=trainer)
    vocab = dict(sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]))
    clean = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    clean.add_special_tokens(list(SPECIAL_TOKENS))
    special_ids(clean, "trained vocabulary")
    return _add_template(_bert_pipeline(clean, cfg.lowercase))


def vocab_list(tok: Tokenizer) -> list[str]:
    """Tokens in id order, as a BERT vocab.txt lists them."""
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


def save_tokenizer(tok: Tokenizer, directory: Path) -> str:
    """Write tokenizer.json and vocab.txt atomically; returns tokenizer.json's sha256."""
    with atomic_write(directory / "tokenizer.json", "w") as f:
        f.write(tok.to_str(pretty=True))
    with atomic_write(directory / "vocab.txt", "w") as f:
        f.write("\n".join(vocab_list(tok)) + "\n")
    return sha256_file(directory / "tokenizer.json")
