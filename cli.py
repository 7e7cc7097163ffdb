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
@click.option("--backend", type=click.Choice(["native", "tokenizers"]), default="native", show_default=True,
              help="native: BERT WordPiece in C, the same ids as tokenizers, several times faster (used when the "
              "tokenizer is BERT's pipeline, else tokenizers); tokenizers: HuggingFace tokenizers, the reference.")
@click.option("--overwrite", is_flag=True, help="Replace a token store of a different run in --out.")
@click.option("--chunk-mb", type=float, default=64.0, show_default=True,
              help="Inputs are cut into spans of about this size at document boundaries (a compressed file is one "
              "span): the unit of work on a --cluster. The output is the same for any value.")
@click.option("--cluster", metavar="ADDRESS", help="Run the work as tasks on a Dask distributed cluster: a "
              "scheduler's address (tcp://host:8786), or local:N to start N worker processes here for this command. "
              "Output is byte-identical to a run without it. Needs pip install 'bertprep[cluster]'.")
@click.option("--cluster-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the --cluster scheduler to answer and to have a worker.")
def tokenize(corpus, out, fmt, vocab, tokenizer_json, vocab_size, lowercase, label, workers, backend, overwrite,
             chunk_mb, cluster, cluster_timeout):
    """Tokenize CORPUS files into a memory-mappable token store.

    Inputs may be plain text, WikiText-103 (.tokens), .jsonl (a 'text' field per line) or .parquet (a
    'text' column), each optionally .gz/.bz2/.zst compressed. Without --vocab/--tokenizer a WordPiece
    vocab is trained on the corpus first. Writes ids.bin, sentences.bin, documents.bin,
    tokenizer.json, vocab.txt and manifest.json (last) to --out.

    Example: bertprep tokenize wiki.train.tokens --out tokens/
    On a cluster: bertprep tokenize /shared/c4/*.json.gz --vocab vocab.txt --out /shared/tokens --cluster tcp://head:8786
    """
    from bertprep.preprocess.tokenizing import TokenizeConfig, run_tokenize
    from bertprep.preprocess.vocab import VocabConfig

    cfg = TokenizeConfig(
        inputs=tuple(corpus), out=out, fmt=fmt, label=label, workers=workers, backend=backend, overwrite=overwrite,
        vocab=VocabConfig(vocab=vocab, tokenizer=tokenizer_json, vocab_size=vocab_size, lowercase=lowercase),
        chunk_mb=chunk_mb, cluster=cluster, cluster_timeout=cluster_timeout,
    )
    result = run_tokenize(cfg)
    if result["fallback_reason"]:
        click.echo(f"note: native backend not used, tokenizers instead: {result['fallback_reason']}", err=True)
    m, c = result["manifest"], result["manifest"]["counts"]
    bad = f", {c['invalid_utf8']} invalid UTF-8 sequences replaced" if c["invalid_utf8"] else ""
    on = f" on {result['cluster']}, {result['chunks']:,} chunks" if result["cluster"] else ""
    click.echo(
        f"tokenized {_mb(c['bytes_read'])}: {c['documents']:,} documents, {c['sentences']:,} sentences, "
        f"{c['tokens']:,} tokens ([UNK] {100 * c['unk_rate']:.2f}%{bad}) in {result['seconds']:.1f}s "
        f"= {result['tokens_per_s']:,.0f} tokens/s ({result['backend']}{on}); vocab {m['tokenizer']['vocab_size']:,} "
        f"({m['tokenizer']['source']}) -> {out}/ (label '{m['label']}')"
    )


@cli.command()
@click.option("--tokens", type=click.Path(path_type=Path), default=Path("tokens"), show_default=True,
              help="Token store written by `bertprep tokenize`.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("shards"), show_default=True,
              help="Directory for the shard files and the run's manifest.")
@click.option("--max-len", type=int, default=128, show_default=True, help="Tokens per example (8..4096), [CLS]/[SEP] included.")
@click.option("--seed", type=int, default=12345, show_default=True, help="Seeds document splits, packing and masking.")
@click.option("--strategy", type=click.Choice(["segment", "split"]), default="segment", show_default=True,
              help="segment: whole sentences of one document, as google-research/bert; split: contiguous "
              "windows of exactly max-len - 2 tokens (no padding).")
@click.option("--short-seq-prob", type=float, default=0.1, show_default=True,
              help="Share of segment-strategy examples given a random shorter target length.")
@click.option("--nsp", is_flag=True, help="Make [CLS] A [SEP] B [SEP] pairs with next-sentence labels (50% random B).")
@click.option("--mask-prob", type=float, default=0.15, show_default=True, help="Share of tokens chosen for prediction.")
@click.option("--max-predictions", type=int, help="Prediction slots per example [default: round(max-len * mask-prob)].")
@click.option("--whole-word", is_flag=True, help="Choose whole words (a token and its ## pieces) together.")
@click.option("--dupe-factor", type=int, default=1, show_default=True, help="Write N differently masked copies.")
@click.option("--split", "split_", default="0.98,0.01,0.01", show_default=True,
              help="Fractions of documents for train,val,test.")
@click.option("--split-seed", type=int, default=0, show_default=True,
              help="Seeds which documents go to val/test; independent of --seed and --max-len, so runs at "
              "other lengths or seeds from one token store never train on each other's validation documents.")
@click.option("--format", "fmt", type=click.Choice(["arrow", "msgpack"]), default="arrow", show_default=True,
              help="arrow: uncompressed Arrow IPC, memory-mapped by the trainer; msgpack: msgpack records, zstd-compressed.")
@click.option("--examples-per-shard", type=int, default=65536, show_default=True, help="Examples per part file.")
@click.option("--workers", type=int, default=0, show_default=True, help="Worker processes; 0 = all cores. "
              "Output is byte-identical for any value.")
@click.option("--overwrite", is_flag=True, help="Replace shards of other settings found in --out.")
@click.option("--cluster", metavar="ADDRESS", help="Run the work as tasks on a Dask distributed cluster: a "
              "scheduler's address (tcp://host:8786), or local:N to start N worker processes here for this command. "
              "Output is byte-identical to a run without it. Needs pip install 'bertprep[cluster]'.")
@click.option("--cluster-timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the --cluster scheduler to answer and to have a worker.")
def shard(tokens, out, max_len, seed, strategy, short_seq_prob, nsp, mask_prob, max_predictions, whole_word,
          dupe_factor, split_, split_seed, fmt, examples_per_shard, workers, overwrite, cluster, cluster_timeout):
    """Cut a token store into fixed-length, pre-masked MLM (and NSP) examples in shard files.

    Writes {split}_{label}_{maxlen}_{seed}_{part}.arrow files for the train, val and test splits
    (documents never cross splits) and {label}_{maxlen}_{seed}.manifest.json last.

    Example: bertprep shard --max-len 128 --seed 123
    On a cluster: bertprep shard --tokens /shared/tokens --out /shared/shards --cluster tcp://head:8786
    """
    from bertprep.preprocess.sharding import ShardConfig, run_shard

    cfg = ShardConfig(tokens=tokens, out=out, max_len=max_len, seed=seed, strategy=strategy,
                      short_seq_prob=short_seq_prob, nsp=nsp, mask_prob=mask_prob, max_predictions=max_predictions,
                      whole_word=whole_word, dupe_factor=dupe_factor, split=split_, split_seed=split_seed, fmt=fmt,
                      examples_per_shard=examples_per_shard, workers=workers, overwrite=overwrite, cluster=cluster,
                      cluster_timeout=cluster_timeout)
    result = run_shard(cfg)
    m = result["manifest"]
    per_split = ", ".join(f"{k} {v['examples']:,}" for k, v in m["splits"].items())
    on = f" on {result['cluster']} ({result['chunks']:,} chunks)" if result.get("cluster") else ""
    click.echo(f"sharded: {per_split} examples in {len(m['files'])} files; mask rate {m['mask_rate']:.4f}, "
               f"padding {100 * m['padding_fraction']:.1f}%; {result['seconds']:.1f}s = "
               f"{result['examples_per_s']:,.0f} examples/s{on} -> {out}/")
    for split in m["empty_splits"]:
        click.echo(f"warning: split '{split}' got no examples (too few documents for --split {split_}); "
                   "no file written for it", err=True)


@cli.command()
@click.argument("shard_file", type=click.Path(path_type=Path))
@click.option("-n", "count", type=int, default=3, show_default=True, help="How many examples to print.")
@click.option("--start", type=int, default=0, show_default=True, help="Index of the first example.")
@click.option("--vocab", type=click.Path(path_type=Path),
              help="vocab.txt to decode with [default: the token store the shards were made from].")
def inspect(shard_file, count, start, vocab):
    """Print decoded examples of SHARD_FILE: the masked input, segments A/B, targets and NSP label.

    In the input, [MASK] is a masked target, «word» a target left unchanged and «word?» a target
    replaced by a random token.
    """
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


@cli.command()
@click.option("--checkpoint", help="Pretraining run directory (its newest checkpoint) or checkpoint file.")
@click.option("--init-from-hf", "init_from_hf", type=click.Path(path_type=Path),
              help="Start from a HuggingFace BERT directory (weights and tokenizer) instead of --checkpoint.")
@click.option("--train", "train_file", required=True, help="Labelled training set: .parquet (SST-2 layout), .tsv, .csv or .jsonl.")
@click.option("--val", "val_file", required=True, help="Labelled validation set, evaluated after each epoch.")
@click.option("--test", "test_file", help="Labelled test set, evaluated once with each seed's best epoch.")
@click.option("--text-column", default="sentence", show_default=True)
@click.option("--text-column-b", help="Second sentence of a pair: inputs become [CLS] a [SEP] b [SEP] (entailment-style tasks).")
@click.option("--label-column", default="label", show_default=True, help="Integer labels 0..K-1.")
@click.option("--task", type=click.Choice(["classification", "regression"]), default="classification",
              show_default=True, help="regression: only a rating head on --regression-column, no classes.")
@click.option("--regression-column", help="A number per row (e.g. a star rating) learnt by a rating head on the same "
              "[CLS] output, reported as MAE; with --task classification, next to the classes.")
@click.option("--regression-weight", type=float, default=0.02, show_default=True,
              help="Weight of the rating's L1 loss (in standard deviations of the training ratings) next to cross-entropy.")
@click.option("--out", default="runs/finetune", show_default=True,
              help="Run directory: best.pt, metrics.jsonl, predictions.jsonl, tokenizer.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="Batches summed into one optimizer step (an effective batch of batch-size x N in less memory).")
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.1, show_default=True, help="Share of steps of linear warm-up; then linear decay to 0.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW decay (not on biases and LayerNorm).")
@click.option("--clip", type=float, default=1.0, show_default=True, help="Gradient-norm clipping (0: off).")
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option("--max-len", type=int, default=128, show_default=True, help="Tokens per example, [CLS]/[SEP] included.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", help="Comma-separated seeds, e.g. 1,2,3: one fine-tune per seed, each accuracy and mean ± std "
              "reported, the best epoch of all kept (replaces --seed).")
@click.option("--from-scratch", is_flag=True, help="Same architecture with random weights (the baseline to compare with).")
@click.option("--show-batch", is_flag=True, help="Print the first training batch decoded ([CLS] text [SEP] [PAD]...) with its labels.")
@click.option("--show-errors", type=int, default=0, show_default=True, metavar="N",
              help="Print the N validation rows the kept model gets most confidently wrong.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def finetune(checkpoint, init_from_hf, train_file, val_file, test_file, text_column, text_column_b, label_column, task,
             regression_column, regression_weight, out, epochs, batch_size, grad_accum, lr, warmup_ratio, weight_decay,
             clip, dropout, max_len, seed, seeds, from_scratch, show_batch, show_errors, device):
    """Fine-tune a pretrained encoder for sentence (or sentence-pair) classification, a rating, or both.

    Defaults follow the BERT paper: AdamW lr 2e-5, batch 32, 3 epochs, 10% warm-up then linear
    decay, weight decay 0.01, clipping 1.0. Before training it prints its checks: encoder tensors
    loaded from the checkpoint (none: refused), the label balance, and the untrained head's loss
    against ln(classes). Validation after each epoch (a warning when it predicts one class); the
    best epoch is kept as OUT/best.pt, tested at the end, and its validation predictions written
    to OUT/predictions.jsonl.

    Example: bertprep finetune --checkpoint runs/run0 --train train.parquet --val validation.parquet --seeds 1,2,3
    """
    from bertprep.shards.errors import ConfigError
    from bertprep.finetune.tune import FinetuneConfig
    from bertprep.finetune.tune import finetune as run_finetune

    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else ()
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers such as 1,2,3, got {seeds!r}") from None
    cfg = FinetuneConfig(checkpoint=checkpoint, init_from_hf=str(init_from_hf) if init_from_hf else None,
                         train=train_file, val=val_file, test=test_file, text_column=text_column,
                         text_column_b=text_column_b, label_column=label_column, task=task,
                         regression_column=regression_column, regression_weight=regression_weight, out=out,
                         epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_ratio=warmup_ratio,
                         weight_decay=weight_decay, clip=clip, dropout=dropout, max_len=max_len, seed=seed,
                         seeds=seed_list, from_scratch=from_scratch, show_batch=show_batch, show_errors=show_errors,
                         device=device)
    r = run_finetune(cfg, echo=click.echo, warn=lambda line: click.echo(line, err=True))
    scores = [f"val acc {100 * r['val_acc']:.2f}%" if "val_acc" in r else f"val MAE {r['val_mae']:.4f}"]
    scores += [f"test acc {100 * r['test_acc']:.2f}%"] if "test_acc" in r else []
    scores += [f"test MAE {r['test_mae']:.4f}"] if "test_mae" in r and "test_acc" not in r else []
    seed_note = f" (seed {r['best_seed']})" if len(cfg.seed_list) > 1 else ""
    click.echo(f"best epoch {r['best_epoch']}{seed_note}: {', '.join(scores)} -> {out}/best.pt")


@cli.command()
@click.argument("sentences", nargs=-1)
@click.option("--checkpoint", required=True, help="Pretraining run (fill-mask) or fine-tuned run (class probabilities).")
@click.option("--file", "file_", type=click.Path(path_type=Path), help="Read sentences from this file, one per line.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Tokens shown per [MASK].")
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
    if top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {top_k}")
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
        for n, options in enumerate(res, 1):
            click.echo(f"  [MASK] {n}: " + " | ".join(f"{o['token']} {o['prob']:.4f}" for o in options))


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


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", default="curves.png", show_default=True, help="Image to write: .png, .svg or .pdf.")
@click.option("--metric", "metrics", multiple=True,
              help="A panel to draw (repeatable): loss, val_mlm_acc, val_ppl, val_nsp_acc, val_acc, val_mae, lr, "
              "tokens_per_s or any key of metrics.jsonl [default: every recorded one of these].")
@click.option("--dpi", type=int, default=100, show_default=True)
def plot(runs, out, metrics, dpi):
    """Draw the curves of one or more RUN directories from their metrics.jsonl, on shared axes.

    Loss (train and validation), validation MLM accuracy and perplexity, learning rate and tokens/s
    for pretraining runs; accuracy for fine-tuning runs. Each run is a colour, labelled by its name;
    records with a `phase` field get each phase's start marked. Needs matplotlib (`bertprep[plot]`).

    Example: bertprep plot runs/tiny runs/mini -o curves.png
    """
    from bertprep.report.plotting import PlotConfig, plot_runs

    r = plot_runs(PlotConfig(runs=tuple(map(str, runs)), out=out, metrics=tuple(metrics), dpi=dpi))
    click.echo(f"plotted {', '.join(r['panels'])} of {len(r['runs'])} run(s) -> {r['out']}")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("-o", "--out", default="report.html", show_default=True, help="HTML file to write.")
@click.option("-n", "examples", type=int, default=8, show_default=True,
              help="Validation sentences to show (fine-tuning: worst errors).")
@click.option("--val", multiple=True, help="Validation data instead of the run's own: val shard files for a "
              "pretraining run, a labelled file for a fine-tuning run (repeatable).")
@click.option("--val-batches", type=int, default=20, show_default=True, help="Batches for the final figures.")
@click.option("--batch-size", type=int, default=32, show_default=True)
def report(run, out, examples, val, val_batches, batch_size):
    """Write one self-contained HTML page about RUN: settings, curves, final figures and predictions.

    Pretraining: validation figures before and after training, and validation sentences with each
    masked token green (top-1 guess right) or orange (wrong, true token beside), top 3 on hover.
    Fine-tuning: the confusion matrix and the worst errors. Images are embedded; no network is needed.

    Example: bertprep report runs/pydocs-tiny -o report.html
    """
    from bertprep.report.report import ReportConfig, write_report

    r = write_report(ReportConfig(run=str(run), out=out, examples=examples, val=tuple(val),
                                  val_batches=val_batches, batch_size=batch_size))
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
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs per run: the batch is split over them.")
@click.option("--steps", type=int, help="Total steps [default: the recipe's]; phase ends and warm-up scale with it.")
@click.option("--batch-size", type=int, help="Examples per step over all GPUs [default: the recipe's].")
@click.option("--vocab-size", type=int, help="WordPiece vocabulary to train [default: the recipe's].")
def recipe(name, corpus, tokens_dir, gpus, steps, batch_size, vocab_size):
    """Print the steps of pretraining with recipe NAME on CORPUS, each with its exact command:
    tokenize, shard at each phase's length (128 and 512), train phase 1, train phase 2 from it.

    Without NAME, lists the recipes. `trainer/run.py --recipe NAME` applies the same settings.

    Example: bertprep recipe bert-base wiki.train.tokens --gpus 8
    """
    import json

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
    lines, steps_ = plan(r, [str(p) for p in corpus], tokens=tokens, tokens_exact=tokens is not None, corpus_bytes=size,
                         gpus=gpus, steps=steps, batch=batch_size, vocab_size=vocab_size, tokens_dir=str(tokens_dir))
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
