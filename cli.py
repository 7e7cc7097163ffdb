"""The `bertprep` command line: a thin shell that turns flags into a config and calls the library.

A `BertprepError` becomes one line on stderr and exit code 2; anything else is a bug and keeps its
traceback. This module imports neither torch nor the heavy preprocessing code at start-up, so
`bertprep --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bertprep.shards.errors import BertprepError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bertprep")
def cli() -> None:
    """Prepare BERT pretraining data: tokenize a corpus, cut it into pre-masked shards, inspect
    and verify them. Train with `torchrun trainer/run.py --shards shards/train_*`."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@cli.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("tokens"), show_default=True,
              help="Directory of the token store to write.")
@click.option("--format", "fmt", type=click.Choice(["auto", "text", "wikitext", "jsonl", "parquet"]), default="auto",
              show_default=True, help="Input layout; auto = by suffix (.jsonl, .parquet), WikiText when "
              "' = Title = ' headings appear, else plain text (a paragraph per line, blank line between documents).")
@click.option("--vocab", type=click.Path(path_type=Path), help="Use this BERT vocab.txt instead of training one.")
@click.option("--tokenizer", "tokenizer_json", type=click.Path(path_type=Path),
              help="Use this tokenizers JSON file (its own normalization applies) instead of training one.")
@click.option("--vocab-size", type=int, default=30522, show_default=True, help="Size of the vocab to train.")
@click.option("--lowercase/--cased", default=True, show_default=True,
              help="Uncased (lower-case, accents stripped, as BERT uncased) or cased text.")
@click.option("--label", help="Name of this corpus in shard file names [default: first dotted part of the first "
              "input's name, e.g. 'wiki' for wiki.train.tokens].")
@click.option("--workers", type=int, default=0, show_default=True, help="Encoder threads; 0 = all cores.")
@click.option("--overwrite", is_flag=True, help="Replace a token store of a different run in --out.")
def tokenize(corpus, out, fmt, vocab, tokenizer_json, vocab_size, lowercase, label, workers, overwrite):
    """Tokenize CORPUS files into a memory-mappable token store.

    Inputs may be plain text, WikiText-103 (.tokens), .jsonl (a 'text' field per line) or .parquet (a
    'text' column), each optionally .gz/.bz2/.zst compressed. Without --vocab/--tokenizer a WordPiece
    vocab is trained on the corpus first. Writes ids.bin, sentences.bin, documents.bin,
    tokenizer.json, vocab.txt and manifest.json (last) to --out.

    Example: bertprep tokenize wiki.train.tokens --out tokens/
    """
    from bertprep.preprocess.tokenizing import TokenizeConfig, run_tokenize
    from bertprep.preprocess.vocab import VocabConfig

    cfg = TokenizeConfig(
        inputs=tuple(corpus), out=out, fmt=fmt, label=label, workers=workers, overwrite=overwrite,
        vocab=VocabConfig(vocab=vocab, tokenizer=tokenizer_json, vocab_size=vocab_size, lowercase=lowercase),
    )
    result = run_tokenize(cfg)
    m, c = result["manifest"], result["manifest"]["counts"]
    bad = f", {c['invalid_utf8']} invalid UTF-8 sequences replaced" if c["invalid_utf8"] else ""
    click.echo(
        f"tokenized {_mb(c['bytes_read'])}: {c['documents']:,} documents, {c['sentences']:,} sentences, "
        f"{c['tokens']:,} tokens ([UNK] {100 * c['unk_rate']:.2f}%{bad}) in {result['seconds']:.1f}s "
        f"= {result['tokens_per_s']:,.0f} tokens/s; vocab {m['tokenizer']['vocab_size']:,} "
        f"({m['tokenizer']['source']}) -> {out}/ (label '{m['label']}')"
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the click group, mapping our errors to one line and exit 2."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except BertprepError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # bad flags: click's own message, but our exit code
        e.show()
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
