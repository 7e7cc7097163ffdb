"""The `bertprep` command line: a thin shell that turns flags into a config and calls the library.

A `BertprepError` becomes one line on stderr and exit code 2; anything else is a bug and keeps its
traceback. This module imports neither torch nor the heavy preprocessing code at start-up, so
`bertprep --help` is instant.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from bertprep.shards import options
from bertprep.shards.errors import BertprepError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bertprep")
def cli() -> None:
    """Prepare BERT pretraining data: tokenize a corpus, cut it into pre-masked shards, inspect
    and verify them. Train with `torchrun trainer/run.py --shards shards/train_*`."""


class ConfigCommand(click.Command):
    """A command whose options are the flags of a config class (`module:Class`), derived from its
    fields (`shards/options.py`) when the command runs or shows its help: so a default, a choice or
    a help text is written once, on the field, and `bertprep --help` imports none of the configs'
    modules (fine-tuning's imports torch)."""

    def __init__(self, *args, config: str, **kwargs):
        self.config, self._derived = config, None
        super().__init__(*args, **kwargs)

    def config_class(self):
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def params(self) -> list:
        if self._derived is None:
            self._derived = self._own + options.click_params(self.config_class())
        return self._derived

    @params.setter
    def params(self, value: list) -> None:  # click sets the declared arguments here
        self._own, self._derived = list(value), None


def _config_command(config: str):
    return cli.command(cls=ConfigCommand, config=config)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@_config_command("bertprep.preprocess.tokenizing:TokenizeConfig")
@click.argument("corpus", nargs=-1, required=True, type=click.Path(path_type=Path))
def tokenize(corpus, **flags):
    """Tokenize CORPUS files into a memory-mappable token store.

    Inputs may be plain text, WikiText-103 (.tokens), .jsonl (a 'text' field per line) or .parquet (a
    'text' column), each optionally .gz/.bz2/.zst compressed. Without --vocab/--tokenizer a WordPiece
    vocab is trained first, on a sample of the corpus (--vocab-sample-mb; 0 = all of it). Writes ids.bin, sentences.bin, documents.bin,
    tokenizer.json, vocab.txt and manifest.json (last) to --out.

    Example: bertprep tokenize wiki.train.tokens --out tokens/
    On a cluster: bertprep tokenize /shared/c4/*.json.gz --vocab vocab.txt --out /shared/tokens --cluster tcp://head:8786
    """
    from bertprep.preprocess.tokenizing import TokenizeConfig, run_tokenize

    cfg = options.build(TokenizeConfig, flags | {"inputs": tuple(corpus)})
    result = run_tokenize(cfg)
    if result["fallback_reason"]:
        click.echo(f"note: native backend not used, tokenizers instead: {result['fallback_reason']}", err=True)
    m, c = result["manifest"], result["manifest"]["counts"]
    bad = f", {c['invalid_utf8']} invalid UTF-8 sequences replaced" if c["invalid_utf8"] else ""
    on = f" on {result['cluster']}, {result['chunks']:,} chunks" if result["cluster"] else ""
    source = m["tokenizer"]["source"]
    if (sample := result["vocab_sample"]) and sample["sampled"]:
        source += (f" on a {_mb(sample['bytes'])} sample of {_mb(sample['of'])}, --vocab-sample-mb "
                   f"{cfg.vocab.vocab_sample_mb:g}")
    click.echo(
        f"tokenized {_mb(c['bytes_read'])}: {c['documents']:,} documents, {c['sentences']:,} sentences, "
        f"{c['tokens']:,} tokens ([UNK] {100 * c['unk_rate']:.2f}%{bad}) in {result['seconds']:.1f}s "
        f"= {result['tokens_per_s']:,.0f} tokens/s ({result['backend']}{on}); vocab {m['tokenizer']['vocab_size']:,} "
        f"({source}) -> {cfg.out}/ (label '{m['label']}')"
    )


@_config_command("bertprep.preprocess.sharding:ShardConfig")
def shard(**flags):
    """Cut a token store into fixed-length, pre-masked MLM (and NSP) examples in shard files.

    Writes {split}_{label}_{maxlen}_{seed}_{part}.arrow files for the train, val and test splits
    (documents never cross splits) and {label}_{maxlen}_{seed}.manifest.json last.

    Example: bertprep shard --max-len 128 --seed 123
    On a cluster: bertprep shard --tokens /shared/tokens --out /shared/shards --cluster tcp://head:8786
    """
    from bertprep.preprocess.sharding import ShardConfig, run_shard

    cfg = options.build(ShardConfig, flags)
    result = run_shard(cfg)
    m = result["manifest"]
    per_split = ", ".join(f"{k} {v['examples']:,}" for k, v in m["splits"].items())
    on = f" on {result['cluster']} ({result['chunks']:,} chunks)" if result.get("cluster") else ""
    click.echo(f"sharded: {per_split} examples in {len(m['files'])} files; mask rate {m['mask_rate']:.4f}, "
               f"padding {100 * m['padding_fraction']:.1f}% (packing efficiency "
               f"{100 * m['packing_efficiency']:.1f}%); {result['seconds']:.1f}s = "
               f"{result['examples_per_s']:,.0f} examples/s{on} -> {cfg.out}/")
    for split in m["empty_splits"]:
        click.echo(f"warning: split '{split}' got no examples (too few documents for --split {cfg.split}); "
                   "no file written for it", err=True)


@cli.command()
@click.argument("shard_file", type=click.Path(path_type=Path))
@click.option("-n", "count", type=click.IntRange(min=0), default=3, show_default=True,
              help="How many examples to print.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the first example.")
@click.option("--vocab", type=click.Path(path_type=Path),
              help="vocab.txt to decode with [default: the token store the shards were made from].")
def inspect(shard_file, count, start, vocab):
    """Print decoded examples of SHARD_FILE: the masked input, segments A/B, targets and NSP label.

    In the input, [MASK] is a masked target, «word» a target left unchanged and «word?» a target
    replaced by a random token.
    """
    from bertprep.shards.errors import ConfigError
    from bertprep.shards.reader import open_shard
    from bertprep.shards.render import find_vocab, render_example

    s = open_shard(shard_file)
    words = find_vocab(shard_file, s.meta, vocab)
    m = s.meta
    click.echo(f"{shard_file}: {s.num_examples:,} examples, max_len {m['max_len']}, strategy {m['strategy']}, "
               f"mask_prob {m['mask_prob']}, whole_word {m['whole_word']}, nsp {m['nsp']}, seed {m['seed']}, "
               f"split {m['split']}")
    if words is None:
        click.echo("note: no matching vocab found (pass --vocab tokens/vocab.txt); showing ids", err=True)
    if start and start >= s.num_examples:
        raise ConfigError(f"--start {start} is past the last example of {shard_file} ({s.num_examples:,} examples)")
    stop = min(start + count, s.num_examples)
    rows = s.slice(start, stop)
    for i in range(stop - start):
        click.echo(render_example({k: v[i] for k, v in rows.items()}, m, words, start + i))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def verify(paths):
    """Re-check shard files, manifests or directories of them: checksums, schema and value ranges.

    Exits 2 naming the first bad file.
    """
    from bertprep.shards.verify import verify_paths

    r = verify_paths(list(paths))
    click.echo(f"ok: {r['files']} files, {r['examples']:,} examples verified")


@_config_command("bertprep.finetune.config:FinetuneConfig")
def finetune(**flags):
    """Fine-tune a pretrained encoder for sentence (or sentence-pair) classification, a rating, or both.

    Defaults follow the BERT paper: AdamW lr 2e-5, batch 32, 3 epochs, 10% warm-up then linear
    decay, weight decay 0.01, clipping 1.0. Before training it prints its checks: encoder tensors
    loaded from the checkpoint (none: refused), the label balance, and the untrained head's loss
    against ln(classes). Validation after each epoch (a warning when it predicts one class); the
    best epoch is kept as OUT/best.pt, tested at the end, and its validation predictions written
    to OUT/predictions.jsonl.

    Example: bertprep finetune --checkpoint runs/run0 --train train.parquet --val validation.parquet --seeds 1,2,3
    """
    from bertprep.finetune.config import FinetuneConfig
    from bertprep.finetune.tune import finetune as run_finetune
    from bertprep.shards.errors import ConfigError

    given = click.get_current_context().get_parameter_source("seed") is click.core.ParameterSource.COMMANDLINE
    if given and flags.get("seeds") is not None:  # even --seed 0, the default the config cannot tell apart
        raise ConfigError("give --seed N (one fine-tune) or --seeds N,M,... (one per seed), not both")
    cfg = options.build(FinetuneConfig, flags)
    r = run_finetune(cfg, echo=click.echo, warn=lambda line: click.echo(line, err=True))
    scores = [f"val acc {100 * r['val_acc']:.2f}%" if "val_acc" in r else f"val MAE {r['val_mae']:.4f}"]
    scores += [f"test acc {100 * r['test_acc']:.2f}%"] if "test_acc" in r else []
    scores += [f"test MAE {r['test_mae']:.4f}"] if "test_mae" in r and "test_acc" not in r else []
    seed_note = f" (seed {r['best_seed']})" if len(cfg.seed_list) > 1 else ""
    click.echo(f"best epoch {r['best_epoch']}{seed_note}: {', '.join(scores)} -> {cfg.out}/best.pt")


@cli.command()
@click.argument("sentences", nargs=-1)
@click.option("--checkpoint", required=True, help="Pretraining run (fill-mask) or fine-tuned run (class probabilities).")
@click.option("--file", "file_", type=click.Path(path_type=Path), help="Read sentences from this file, one per line.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Tokens shown per [MASK] (at most 1000).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def predict(sentences, checkpoint, file_, top_k, as_json):
    """Fill in each [MASK] of SENTENCES with the top-k tokens and their probabilities; with a
    fine-tuned checkpoint, print class probabilities (and the rating of a rating head) instead.
    A sentence-pair model takes each input as 'first<TAB>second'.

    Example: bertprep predict --checkpoint runs/run0 "the capital of france is [MASK] ."

    --json prints, per sentence, per [MASK] in order, a list of {"token", "prob"}, best first
    (class probabilities: per sentence, a list of probabilities by class; with a rating head too,
    {"probs", "rating"} per sentence; a rating head alone: a rating per sentence).
    """
    import json

    from bertprep.shards.errors import InputError
    from bertprep.finetune.predict import predict as run_predict

    texts = list(sentences)
    if file_ is not None:
        try:
            texts += [line.strip() for line in file_.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{file_}: cannot read ({e.__class__.__name__})") from None
    result = run_predict(checkpoint, texts, top_k)
    if as_json:
        if "ratings" in result:  # a class head and a rating head: both, per sentence
            click.echo(json.dumps([{"probs": p, "rating": r} for p, r in zip(result["results"], result["ratings"])]))
        else:
            click.echo(json.dumps(result["results"]))
        return
    for i, (text, res) in enumerate(zip(texts, result["results"])):
        click.echo(text)
        if result["kind"] == "classify":
            best = max(range(len(res)), key=res.__getitem__)
            click.echo("  class probabilities: " + ", ".join(f"{k}: {p:.4f}" for k, p in enumerate(res))
                       + f"  -> {best}")
        if "ratings" in result or result["kind"] == "rate":
            click.echo(f"  rating: {(result['ratings'][i] if 'ratings' in result else res):.4f}")
        if result["kind"] != "fill-mask":
            continue
        for n, guesses in enumerate(res, 1):
            click.echo(f"  [MASK] {n}: " + " | ".join(f"{o['token']} {o['prob']:.4f}" for o in guesses))


@cli.command()
@click.option("--checkpoint", required=True, help="Pretraining run directory or checkpoint file.")
@click.option("--hf", "hf_dir", required=True, type=click.Path(path_type=Path), help="Directory to write.")
def export(checkpoint, hf_dir):
    """Write a HuggingFace BERT directory: config.json, model.safetensors, vocab.txt, tokenizer.json.

    transformers.BertForMaskedLM.from_pretrained(DIR) loads it (BertForPreTraining when the model
    was trained with NSP).
    """
    from bertprep.trainer.interchange import export_hf

    r = export_hf(checkpoint, hf_dir)
    click.echo(f"exported step {r['step']} as {r['architecture']} ({r['tensors']} tensors) -> {r['out']}/")


@_config_command("bertprep.report.plotting:PlotConfig")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def plot(runs, **flags):
    """Draw the curves of one or more RUN directories from their metrics.jsonl, on shared axes.

    Loss (train and validation), validation MLM accuracy and perplexity, learning rate and tokens/s
    for pretraining runs; accuracy for fine-tuning runs. Each run is a colour, labelled by its name;
    records with a `phase` field get each phase's start marked. Needs matplotlib (`bertprep[plot]`).

    Example: bertprep plot runs/tiny runs/mini -o curves.png
    """
    from bertprep.report.plotting import PlotConfig, plot_runs

    r = plot_runs(options.build(PlotConfig, flags | {"runs": tuple(map(str, runs))}))
    click.echo(f"plotted {', '.join(r['panels'])} of {len(r['runs'])} run(s) -> {r['out']}")


@_config_command("bertprep.report.config:ReportConfig")
@click.argument("run", type=click.Path(path_type=Path))
def report(run, **flags):
    """Write one self-contained HTML page about RUN: settings, curves, final figures and predictions.

    Pretraining: validation figures before and after training, and validation sentences with each
    masked token green (top-1 guess right) or orange (wrong, true token beside), top 3 on hover.
    Fine-tuning: the confusion matrix and the worst errors. Images are embedded; no network is needed.

    Example: bertprep report runs/pydocs-tiny -o report.html
    """
    from bertprep.report.config import ReportConfig
    from bertprep.report.report import write_report

    r = write_report(options.build(ReportConfig, flags | {"run": str(run)}))
    for note in r["notes"]:
        click.echo(f"note: {note}", err=True)
    what = (f"{r['examples']} sentences, {r['masked']} masked tokens coloured" if r["kind"] == "pretrain"
            else f"{r['examples']} worst errors")
    click.echo(f"report ({what}) -> {r['out']}")


@cli.command()
@click.argument("name", required=False)
@click.argument("corpus", nargs=-1, type=click.Path(path_type=Path))
@click.option("--tokens", "tokens_dir", type=click.Path(path_type=Path), default=Path("tokens"), show_default=True,
              help="Token store to write; one already made there from CORPUS gives exact token counts.")
@click.option("--gpus", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="GPUs per run: the batch is split over them.")
@click.option("--steps", type=click.IntRange(1, 10**9),
              help="Total steps [default: the recipe's]; phase ends and warm-up scale with it.")
@click.option("--batch-size", type=click.IntRange(1, 1 << 20),
              help="Examples per step over all GPUs [default: the recipe's].")
@click.option("--vocab-size", type=click.IntRange(128, 1 << 22),
              help="WordPiece vocabulary to train [default: the recipe's].")
def recipe(name, corpus, tokens_dir, gpus, steps, batch_size, vocab_size):
    """Print the steps of pretraining with recipe NAME on CORPUS, each with its exact command:
    tokenize, shard at each phase's length (128 and 512), train phase 1, train phase 2 from it.

    Without NAME, lists the recipes. `trainer/run.py --recipe NAME` applies the same settings.

    Example: bertprep recipe bert-base wiki.train.tokens --gpus 8
    """
    import json

    from bertprep.preprocess.sharding import ShardConfig
    from bertprep.preprocess.tokenizing import TokenizeConfig
    from bertprep.shards.errors import ConfigError, InputError
    from bertprep.trainer.recipes import available, load_recipe, plan

    if not name:
        for n in available():
            click.echo(f"{n:<11} {load_recipe(n).description}")
        return
    r = load_recipe(name)
    if not corpus:
        raise ConfigError(f"bertprep recipe {name}: name the corpus to size the steps for (bertprep recipe {name} CORPUS...)")
    missing = [str(p) for p in corpus if not p.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such corpus file")
    size = sum(p.stat().st_size for p in corpus)
    tokens = None
    try:  # a token store already made from exactly these files: its count, not an estimate
        m = json.loads((tokens_dir / "manifest.json").read_text(encoding="utf-8"))
        made_from = [(str(Path(i["path"]).resolve()), i["bytes"]) for i in m["run"]["inputs"]]
        if made_from == [(str(p.resolve()), p.stat().st_size) for p in corpus]:
            tokens = int(m["counts"]["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    data_defaults = {x.name.lstrip("-"): x.default for c in (TokenizeConfig, ShardConfig) for x in options.flags(c)}
    lines, steps_ = plan(r, [str(p) for p in corpus], data_defaults=data_defaults, tokens=tokens,
                         tokens_exact=tokens is not None, corpus_bytes=size, gpus=gpus, steps=steps, batch=batch_size,
                         vocab_size=vocab_size, tokens_dir=str(tokens_dir))
    for line in lines:
        click.echo(line)
    for i, s in enumerate(steps_, 1):
        click.echo(f"\n{i}. {s.title}\n   $ {s.command}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the click group, mapping our errors to one line and exit 2."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except BertprepError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # a path the user gave that the system refused (too long, under a file, ...)
        from bertprep.shards.atomic import path_error

        if (line := path_error(e)) is None:
            raise
        click.echo(f"error: {line}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # unknown flag, missing argument, bad choice: one line, like any bad input
        where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
        hint = "; see --help" if isinstance(e, click.UsageError) else ""
        click.echo(f"error: {where}{' '.join(e.format_message().split()).rstrip('.')}{hint}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
