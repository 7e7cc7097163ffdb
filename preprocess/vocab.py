"""The WordPiece tokenizer: load one (`vocab.txt` or `tokenizer.json`) or train one on the corpus.

Everything is HuggingFace `tokenizers`; this module only assembles BERT's pipeline (BERT
normalizer, BERT pre-tokenizer, WordPiece with `##` continuations, `[CLS] A [SEP]` template) and
checks that the five special tokens exist, because every later stage relies on their ids.
Training reads words files (`preprocess/sampling.py` writes them: the text already normalized
and split into words by BERT's rules), which `tokenizers` reads and counts in Rust on every core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

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
    vocab_sample_mb: float = option(200.0, at_least=0, at_most=1 << 24, help=(
        "Train the vocab on a sample of about this many MB of the corpus: whole documents evenly spread over every "
        "input, the same for every run; 0 = read the whole corpus. A corpus no larger is read whole."))

    def __post_init__(self):
        check(self)
        if self.vocab and self.tokenizer:
            raise ConfigError("give --vocab or --tokenizer, not both")


def bert_pipeline(lowercase: bool) -> Tokenizer:
    """BERT's normalizer and pre-tokenizer around an empty WordPiece model."""
    return _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)), lowercase)


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


# What HuggingFace's vocab.txt reader (`tokenizers`' WordPiece.read_file, used by
# BertWordPieceTokenizer and transformers' BertTokenizerFast) strips from the end of each line:
# Rust's char::is_whitespace. Not Python's str.isspace, which also takes \x1c-\x1f.
HF_TRIMMED = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def read_vocab_txt(path: Path) -> dict[str, int]:
    """A vocab.txt as HuggingFace reads it: line i (from 0, split at `\\n` only) is token i, with
    trailing whitespace stripped; a blank line is the token "" (which no text can produce), so
    every later id stays its line number. HuggingFace keeps the last line of a token given twice
    and leaves the earlier line's id to no token; an id without a token has no place in a vocab
    of N ids, so a file with a repeated token is refused instead."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such vocab file") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise InputError(f"{path}: not a readable UTF-8 vocab.txt ({e.__class__.__name__})") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line opens no line of its own
        lines.pop()
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.rstrip(HF_TRIMMED)
        if token in vocab:
            first = vocab[token]
            what = "are both blank" if token == "" else f"both hold {token!r}"
            raise InputError(f"{path}: lines {first + 1} and {i + 1} {what} (trailing whitespace stripped); a vocab.txt "
                             f"gives each line its line number as id, and HuggingFace would leave id {first} to no "
                             "token: remove one of the two lines")
        vocab[token] = i
    if not vocab:
        raise InputError(f"{path}: empty vocab file")
    return vocab


def load_vocab_txt(path: Path, lowercase: bool) -> Tokenizer:
    """A BERT vocab.txt as a tokenizer giving exactly HuggingFace's ids for the same file."""
    vocab = read_vocab_txt(path)
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


def train_tokenizer(words_files: list[Path], code_points: list[int], cfg: VocabConfig,
                    progress: bool = False) -> Tokenizer:
    """Learn a WordPiece vocabulary of `cfg.vocab_size`, reproducibly, from words files (the text's
    words, space-separated, as BERT's normalizer and pre-tokenizer make them) and the code points
    of the text they were made of.

    The trainer counts words and learns from the counts alone, so a words file gives it exactly
    what the text would, while `tokenizers` only splits at spaces instead of normalizing and
    pre-tokenizing (two thirds of its time). `tokenizers`' trainer gives `##` continuation
    symbols ids in hash-map order, and those ids break ties between equally frequent merges, so
    two runs could learn different vocabularies (huggingface/tokenizers#1794); we fix the ids
    first: every `##c` for a character c of the normalized text is registered, sorted, before
    training. The learned vocabulary is then loaded into a fresh tokenizer so that only BERT's
    five special tokens are special.
    """
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=cfg.lowercase, lowercase=cfg.lowercase)
    chars = sorted(set(normalizer.normalize_str("".join(map(chr, sorted(code_points))))) - set(" \t\n\r"))
    pinned = list(SPECIAL_TOKENS) + [f"##{c}" for c in chars]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordPieceTrainer(vocab_size=max(cfg.vocab_size, len(pinned) + len(chars)),
                                        min_frequency=cfg.min_frequency, special_tokens=pinned,
                                        continuing_subword_prefix="##", show_progress=progress)
    tok.train([str(f) for f in words_files], trainer=trainer)
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


def tokenizer_files(tok: Tokenizer) -> dict[str, bytes]:
    """The bytes of tokenizer.json and vocab.txt for `tok`, as a token store holds them."""
    return {"tokenizer.json": tok.to_str(pretty=True).encode("utf-8"),
            "vocab.txt": ("\n".join(vocab_list(tok)) + "\n").encode("utf-8")}
