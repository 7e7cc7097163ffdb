"""Where a run's weights start, and how one phase of pretraining hands over to the next.

Three starts: fresh weights (the default); `--init-from RUN`, a new *phase* from a bertprep run (its
newest checkpoint); `--init-from-hf DIR`, a HuggingFace BERT directory. A new phase (the BERT
paper's 128-token phase, then its 512-token phase) takes the weights; AdamW and the learning-rate
schedule restart, as google-research/bert's `--init_checkpoint` restarts them (it restores only
trainable variables: no Adam moments, no global step), unless `--keep-optimizer` carries them; the
loader starts at the first batch of the new shards; the step counter goes on, so `metrics.jsonl`
(which begins with the earlier phases' records) and TensorBoard read as one curve.

`--resume` is another thing: it continues *the same* phase and refuses shards of another length,
vocabulary or seed (`check_resume`), naming `--init-from` as the way to start a new phase.

The model's position table is sized by `--max-position` (default 512) from the start, so the
shards' max_len (the data) and the table (the model) are different numbers: shards fit a model when
their max_len is at most its table. A checkpoint's `data` is the shards it was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bertprep.shards.atomic import sha256_file
from bertprep.shards.errors import ConfigError, InputError, ShardFormatError
from bertprep.shards.naming import parse_shard_name
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer.artifacts import find_tokenizer, keep_tokenizer, load_checkpoint, run_dir_of, shard_tokenizer
from bertprep.trainer.config import TrainConfig
from bertprep.trainer.metrics import METRICS_FILE, read_records, records_until, write_records
from bertprep.trainer.mixture import shard_paths
from bertprep.trainer.model import ModelConfig
from bertprep.trainer.optim import apply_rates

DEFAULT_POSITIONS = 512
RESUME_ADVICE = ("--resume continues the same phase on the same shards; to go on from this run's weights with "
                 "other shards, start a new phase: --init-from RUN with a new --out")


@dataclass(frozen=True)
class Start:
    """Weights a run starts from, and the phase it begins."""

    source: str                     # the checkpoint file or HuggingFace directory
    model_config: ModelConfig       # the source's shape and position table
    state: dict                     # its weights, under our names
    step: int                       # the step counter goes on from here (0 from a HuggingFace model)
    phase: dict                     # the phase this run begins (phase_record)
    previous: dict | None           # the source run's phase (None for HuggingFace)
    run_dir: Path | None            # the source run's directory, whose history the new phase carries
    tokenizer: Path | None          # the source's tokenizer.json, when found
    optimizer: dict | None = None   # with --keep-optimizer: AdamW's state and the schedule's
    scheduler: dict | None = None
    notes: tuple[str, ...] = ()     # said when the run starts


def phase_record(index: int, max_len: int, start_step: int, schedule_start: int, source: str | None = None) -> dict:
    """What a checkpoint and config.json keep about the phase: `schedule_start` is the step at which
    the learning-rate schedule began (the phase's first step, or an earlier one with --keep-optimizer)."""
    rec = {"index": index, "name": f"phase{index}-{max_len}", "start_step": start_step,
           "schedule_start": schedule_start}
    return rec | ({"init_from": source} if source else {})


def run_dir_arg(path: str | Path) -> Path:
    """The run directory an --init-from argument names (a run directory or one of its checkpoints)."""
    path = Path(path)
    return run_dir_of(path) if path.is_file() else path


def default_out(cfg: TrainConfig, data: dict) -> str:
    """runs/<label>-<model>; a new phase goes beside its source: runs/<source run>-<max_len>."""
    if cfg.checkpoint.init_from:
        return f"{run_dir_arg(cfg.checkpoint.init_from)}-{data['max_len']}"
    if cfg.checkpoint.init_from_hf:
        return f"runs/{data['label']}-{Path(cfg.checkpoint.init_from_hf).resolve().name}"
    return f"runs/{data['label']}-{cfg.model.preset}"


# --- checks --------------------------------------------------------------------------------------

def _shard_sets(names) -> set:
    return {(n.label, n.max_len, n.seed) for n in map(parse_shard_name, names) if n is not None}


def check_resume(ck: dict, data: dict, shards: list, path: Path) -> None:
    """--resume is strict: the same vocabulary, length, special ids, NSP, tokenizer and shard run
    (label, length, seed) as the checkpoint's, else a message that names --init-from."""
    ckpt_io.check_data_matches(ck["data"], data, path, advice=RESUME_ADVICE)
    if ck["data"].get("tokenizer_sha256") != data.get("tokenizer_sha256"):
        was, now = str(ck["data"].get("tokenizer_sha256"))[:12], str(data.get("tokenizer_sha256"))[:12]
        raise ShardFormatError(f"{path}: the checkpoint was trained on shards of another tokenizer (sha256 {was}…, "
                               f"these {now}…); {RESUME_ADVICE}")
    before = _shard_sets((ck.get("loader") or {}).get("files") or [])
    now = _shard_sets(Path(s.path).name for s in shards)
    if before and now and before != now:
        raise ShardFormatError(f"{path}: the checkpoint was trained on the shards of {_describe(before)}, these are "
                               f"{_describe(now)}; {RESUME_ADVICE}")


def _describe(runs: set) -> str:
    return ", ".join(f"{label} length {n} seed {seed}" for label, n, seed in sorted(runs))


def _check_positions(mcfg: ModelConfig, data: dict, where: str) -> None:
    if data["max_len"] > mcfg.max_len:
        raise ConfigError(f"{where}: the model has {mcfg.max_len} positions but these shards hold "
                          f"{data['max_len']}-token examples; a model meant to grow to longer shards needs "
                          f"--max-position (default {DEFAULT_POSITIONS}) of at least that length from its first phase")


def _normalized(tokenizer_json: Path) -> dict:
    """The parts of a tokenizer that decide ids: normalizer (strip_accents None means 'as lowercase'),
    pre-tokenizer and the WordPiece settings, with the vocabulary itself compared separately."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    norm = dict(spec.get("normalizer") or {})
    if norm.get("type") == "BertNormalizer" and norm.get("strip_accents") is None:
        norm["strip_accents"] = norm.get("lowercase")
    model = {k: v for k, v in (spec.get("model") or {}).items() if k != "vocab"}
    return {"normalizer": norm, "pre_tokenizer": spec.get("pre_tokenizer"), "model": model}


def tokenizer_difference(a: Path, b: Path) -> str:
    """'' when two tokenizers give the same ids (same vocabulary and normalization), else what differs."""
    from tokenizers import Tokenizer

    va = Tokenizer.from_file(str(a)).get_vocab(with_added_tokens=True)
    vb = Tokenizer.from_file(str(b)).get_vocab(with_added_tokens=True)
    if va != vb:
        ia, ib = {i: t for t, i in va.items()}, {i: t for t, i in vb.items()}
        i = next(i for i in sorted(set(ia) | set(ib)) if ia.get(i) != ib.get(i))
        return f"id {i} is {ia.get(i)!r} in one and {ib.get(i)!r} in the other"
    na, nb = _normalized(a), _normalized(b)
    for part in ("normalizer", "pre_tokenizer", "model"):
        if na[part] != nb[part]:
            return f"the same vocabulary but other {part.replace('_', '-')} settings"
    return ""


# --- starting points -----------------------------------------------------------------------------

def starting_point(cfg: TrainConfig, data: dict) -> Start | None:
    """The weights --init-from or --init-from-hf name, checked against the shards; None: fresh."""
    if cfg.checkpoint.init_from:
        return _from_run(cfg, data)
    if cfg.checkpoint.init_from_hf:
        return _from_hf(cfg, data)
    return None


def _from_run(cfg: TrainConfig, data: dict) -> Start:
    path, ck = load_checkpoint(cfg.checkpoint.init_from)
    where = f"--init-from {cfg.checkpoint.init_from}"
    for key in ("vocab_size", "special_ids", "tokenizer_sha256"):
        if ck["data"].get(key) != data.get(key):
            raise ConfigError(f"{where}: that run was trained with {key}={_short(ck['data'].get(key))} but these "
                              f"shards have {key}={_short(data.get(key))}; a new phase needs shards of the same "
                              f"token store (bertprep shard --tokens ... at another --max-len)")
    mcfg = ckpt_io.model_config(ck, path)
    _check_positions(mcfg, data, where)
    step = int(ck["step"])
    if cfg.loop.max_steps <= step:
        raise ConfigError(f"--max-steps {cfg.loop.max_steps}: {where} ends at step {step} and the step counter goes "
                          f"on from there; give the step this phase should end at (above {step})")
    keep = cfg.checkpoint.keep_optimizer
    previous = ck["phase"]
    phase = phase_record(previous["index"] + 1, data["max_len"], step,
                         previous["schedule_start"] if keep else step, str(path))
    try:
        tok = find_tokenizer(ck, path)
    except InputError:
        tok = None
    return Start(str(path), mcfg, ck["model"], step, phase, previous, run_dir_of(path), tok,
                 ck["optimizer"] if keep else None, ck["scheduler"] if keep else None)


def _from_hf(cfg: TrainConfig, data: dict) -> Start:
    """A HuggingFace BERT: same vocabulary size and special ids as the shards, and the tokenizer the
    shards were made with: the same file (sha256), or one with the same vocabulary and normalization
    (a directory with only vocab.txt gets a tokenizer.json built from it, whose bytes differ)."""
    from bertprep.trainer.interchange import load_pretrained

    pre = load_pretrained(hf_dir=cfg.checkpoint.init_from_hf)
    where = f"--init-from-hf {cfg.checkpoint.init_from_hf}"
    fix = ("tokenize the corpus with the model's own tokenizer "
           f"(bertprep tokenize --tokenizer {cfg.checkpoint.init_from_hf}/tokenizer.json)")
    for key in ("vocab_size", "special_ids"):
        if pre.data[key] != data[key]:
            raise ConfigError(f"{where}: the model has {key}={_short(pre.data[key])} but the shards have "
                              f"{key}={_short(data[key])}; {fix}")
    if pre.data["tokenizer_sha256"] != data["tokenizer_sha256"]:
        ours = shard_tokenizer(shard_paths(cfg.data.shards, cfg.data.mix), data["tokenizer_sha256"])
        if ours is None:
            theirs, mine = pre.data["tokenizer_sha256"][:12], data["tokenizer_sha256"][:12]
            raise ConfigError(f"{where}: the model's tokenizer is not the file the shards were made with (sha256 "
                              f"{theirs}… vs {mine}…) and the shards' token store was not found to compare "
                              f"vocabularies; {fix}")
        diff = tokenizer_difference(ours, pre.tokenizer)
        if diff:
            raise ConfigError(f"{where}: the model's tokenizer differs from the one the shards were made with "
                              f"({diff}); {fix}")
        notes = (f"the model's tokenizer is not byte for byte the shards' ({ours}), but its vocabulary and "
                 f"normalization are the same",)
    else:
        notes = ()
    _check_positions(pre.model_config, data, where)
    return Start(pre.source, pre.model_config, pre.state, 0, phase_record(1, data["max_len"], 0, 0, pre.source),
                 None, None, pre.tokenizer, notes=notes)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- applying a start ----------------------------------------------------------------------------

def model_config(cfg: TrainConfig, data: dict, start: Start | None) -> ModelConfig:
    """A fresh model: the flags' shape with --max-position positions; from a start: the source's
    shape and position table, with this run's dropout and an NSP head when these shards have NSP."""
    if start is not None:
        mcfg = start.model_config
        dropout = cfg.model.dropout if cfg.model.dropout is not None else (0.0 if mcfg.arch == "modern" else 0.1)
        return dataclasses.replace(mcfg, dropout=dropout, nsp=data["nsp"] and mcfg.arch == "bert")
    positions = cfg.model.max_position or max(DEFAULT_POSITIONS, data["max_len"])
    if positions < data["max_len"]:
        raise ConfigError(f"--max-position {positions} is shorter than the shards' {data['max_len']}-token examples")
    shape = dict(vocab_size=data["vocab_size"], max_len=positions, dropout=cfg.model.dropout_rate, **cfg.model.shape())
    if cfg.model.architecture == "modern":  # always pre-norm, no NSP head (the shards' labels go unused)
        return ModelConfig(**shape, arch="modern", norm="pre", nsp=False, layer_norm_eps=1e-5,
                           window=cfg.model.window, global_every=cfg.model.global_every,
                           positions=cfg.model.positions, mlp=cfg.model.mlp)
    return ModelConfig(**shape, nsp=data["nsp"], norm=cfg.model.norm)


def load_weights(model, start: Start) -> list[str]:
    """Copy the start's weights into a fresh `Bert`; returns notes. A head the source lacks (the MLM
    head of a bare BertModel, an NSP head) keeps its fresh init; an NSP head these shards cannot
    train is dropped; any other difference is an error."""
    own = model.state_dict()
    state = {k: v for k, v in start.state.items() if k in own or not k.startswith("nsp.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        why = str(e).strip().splitlines()[-1][:200]
        raise ShardFormatError(f"{start.source}: weights do not fit the model ({why})") from None
    head = model.MLM_HEAD
    bad = [k for k in result.missing_keys if not k.startswith((*head, "nsp."))] + list(result.unexpected_keys)
    if bad:
        raise ShardFormatError(f"{start.source}: weights do not fit the model ({', '.join(bad[:3])} ...)")
    notes = list(start.notes)
    if any(k.startswith(head) for k in result.missing_keys):
        notes.append("the MLM head starts fresh (the source has none)")
    if any(k.startswith("nsp.") for k in result.missing_keys):
        notes.append("the NSP head starts fresh (the source was trained without next-sentence prediction)")
    if len(state) < len(start.state):
        notes.append("the source's NSP head is left out (these shards have no NSP labels)")
    return notes


def restore_optimizer(start: Start, opt, sched, cfg: TrainConfig) -> None:
    """--keep-optimizer: AdamW's moments and the schedule's position carry over; this run's flags
    set the rates (peak --lr, betas, eps, weight decay), and the decay now ends at its --max-steps."""
    try:
        opt.load_state_dict(start.optimizer)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"--keep-optimizer: the optimizer of {start.source} does not fit this model ({e}); "
                          f"start the phase without --keep-optimizer") from None
    sched.load_state_dict(start.scheduler)
    apply_rates(opt, sched, cfg.optim)  # the decay now ends at this phase's --max-steps


def carry_history(start: Start, run_dir: Path, tensorboard: bool) -> None:
    """Begin a new phase's metrics.jsonl with its source's records up to the step it starts from
    (tagged with the source's phase) and copy the source's TensorBoard events, so both read as one
    curve across phases. Main rank only; the run directory holds no checkpoint yet."""
    if start.run_dir is None or start.run_dir.resolve() == run_dir.resolve():
        return
    src, records = start.run_dir / METRICS_FILE, []
    if src.is_file():
        for rec in records_until(read_records(src), start.step):  # not what came after the checkpoint
            if "event" not in rec and "phase" not in rec:
                rec["phase"] = start.previous["name"]
            records.append(rec)
    write_records(run_dir / METRICS_FILE, records)
    events = sorted((start.run_dir / "tb").glob("events.out.tfevents.*"))
    if tensorboard and events:
        (run_dir / "tb").mkdir(parents=True, exist_ok=True)
        for p in events:
            if not (run_dir / "tb" / p.name).exists():
                shutil.copyfile(p, run_dir / "tb" / p.name)


def keep_run_tokenizer(cfg: TrainConfig, data: dict, run_dir: Path, start: Start | None) -> str | None:
    """Copy the shards' tokenizer.json and vocab.txt into the run directory, so predict, export and
    finetune work from the run alone. Found through the shards' manifest (`tokens_dir`) or the
    start's directory, only with the sha256 the shards record; returns a note when not found."""
    sha = data.get("tokenizer_sha256")
    tok = shard_tokenizer(shard_paths(cfg.data.shards, cfg.data.mix), sha)
    if tok is None and start is not None and start.tokenizer is not None and start.tokenizer.is_file() \
            and sha256_file(start.tokenizer) == sha:
        tok = start.tokenizer
    if tok is not None:
        keep_tokenizer(tok, run_dir)
        return None
    kept = run_dir / "tokenizer.json"
    if kept.is_file() and sha256_file(kept) == sha:
        return None
    return (f"note: the shards' tokenizer (sha256 {str(sha)[:12]}…) was not found through their manifest's "
            f"tokens_dir; {run_dir} keeps no tokenizer.json, so predict/export/finetune will look for it through "
            f"the shards")
