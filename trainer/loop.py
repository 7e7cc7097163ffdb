"""Pretraining's loop: `train(cfg) -> summary`. Read in this order: `_prepare` (the model, AdamW,
schedule and loader: fresh, resumed from a checkpoint, or a new phase), then `_Run.loop` (the loop
proper), then its helpers (`_reduce_window`, `_validate`, `_save`). Owns `check_finite` (the
NaN/inf stop, shared with fine-tuning), `StopRequest` (signals) and `TrainClock` (`--max-time`).

Per optimizer step: `--grad-accum` micro-batches from the prefetcher (DDP all-reduces only on the
last), clip, AdamW, schedule. Every `--log-interval` steps the window's loss is reduced over ranks
and logged (a non-finite loss stops the run there, before any checkpoint could keep it); every
`--val-interval` steps (and every `--val-minutes` of training time) validation; every
`--ckpt-interval` steps, at the end and on SIGTERM/SIGINT a checkpoint. `--max-time` ends the run
like `--max-steps` (validation, checkpoint) once the training time, pauses for validation and
checkpoints left out (`TrainClock`), reaches the budget. Every rank runs the same steps (the loader
plans them up front), and a stop request or a clock decision is agreed on by all ranks at the same step.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bertprep.shards.atomic import write_json
from bertprep.shards.errors import BertprepError, ConfigError, ShardFormatError
from bertprep.shards.reader import check_compatible, open_shards
from bertprep.shards.verify import check_runs_complete, verify_paths
from bertprep.trainer import checkpoint as ckpt_io
from bertprep.trainer import dist, phases
from bertprep.trainer.config import TrainConfig
from bertprep.trainer.evaluation import decoded_examples, default_val_shards, val_stream, validate, vocab_for
from bertprep.trainer.metrics import MetricsLog, train_line, val_line
from bertprep.trainer.model import pretraining_loss
from bertprep.trainer.optim import BudgetProgress, apply_rates, build_optimizer, build_scheduler, optimizer_step
from bertprep.trainer.prefetch import Prefetcher
from bertprep.trainer.mixture import open_sources
from bertprep.trainer.remask import Remasker, vocab_from
from bertprep.trainer.stream import ShardStream, StreamConfig, shard_data, split_global_batch


class NonFiniteLoss(BertprepError):
    """The loss became NaN or infinite; the run stopped without checkpointing the bad weights."""


def check_finite(loss: float, step: int, kept: Path | None, fix: str) -> None:
    """Stop a run whose loss is NaN or infinite, before anything could keep its weights; says
    which checkpoint is the last good one (pretraining and fine-tuning alike)."""
    if not math.isfinite(loss):
        where = f"; the last good checkpoint is {kept}" if kept else " (no checkpoint was written)"
        raise NonFiniteLoss(f"loss is {loss} at step {step}{where}; {fix}")


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the end of the step and exits.
    A second SIGINT interrupts at once."""

    def __init__(self):
        self.requested, self.signal_name, self._old = False, "", {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class TrainClock:
    """Training time in wall and CPU seconds, validation and checkpoint pauses left out, carried
    across resumes through the checkpoint: what `--max-time` and `--val-minutes` count."""

    def __init__(self, wall_s: float = 0.0, cpu_s: float = 0.0):
        self.wall_s, self.cpu_s, self._since = wall_s, cpu_s, None  # totals up to the last start

    def start(self) -> None:
        self._since = (time.perf_counter(), time.process_time())

    def read(self) -> tuple[float, float]:
        if self._since is None:
            return self.wall_s, self.cpu_s
        return self.wall_s + time.perf_counter() - self._since[0], self.cpu_s + time.process_time() - self._since[1]

    @contextlib.contextmanager
    def paused(self):
        self.wall_s, self.cpu_s = self.read()
        self._since = None
        try:
            yield
        finally:
            self.start()


def train(cfg: TrainConfig) -> dict:
    """Train as `cfg` says (under torchrun: this rank's share); returns a summary of the run."""
    d = dist.setup(cfg.loop.device, timeout_s=cfg.loop.dist_timeout)
    try:
        return _train(cfg, d)
    finally:
        dist.teardown()


def _train(cfg: TrainConfig, d: dist.Dist) -> dict:
    shards, sources, groups = open_sources(cfg.data.shards, cfg.data.mix)
    _check_shards(cfg, shards, d)
    data = shard_data(shards)
    run_dir = Path(cfg.checkpoint.out or phases.default_out(cfg, data))
    ck = _checkpoint_to_resume(cfg, run_dir, data, shards, d)
    start = None if ck else phases.starting_point(cfg, data)  # --init-from / --init-from-hf weights
    log = MetricsLog(run_dir, enabled=d.is_main, tensorboard=cfg.loop.tensorboard, quiet=cfg.loop.quiet,
                     purge_step=int(ck["step"]) + 1 if ck else None)
    try:
        return _prepare(cfg, d, shards, data, run_dir, ck, log, start, (sources, groups)).loop()
    finally:
        log.close()


def _prepare(cfg: TrainConfig, d: dist.Dist, shards, data, run_dir: Path, ck: dict | None, log: MetricsLog,
             start: phases.Start | None = None, mixture: tuple | None = None) -> _Run:
    """Model, optimizer, schedule and loader: fresh, restored from `ck`, or a new phase from `start`.
    Everything that can refuse (the shape, the weights, the validation data) is checked before the
    run directory is made or written to, so a refused run leaves nothing behind."""
    mcfg = ckpt_io.model_config(ck, run_dir) if ck else phases.model_config(cfg, data, start)
    phase = ck["phase"] if ck else start.phase if start else phases.phase_record(1, data["max_len"], 0, 0)
    torch.manual_seed(cfg.loop.seed)  # the same initial weights on every rank (a resumed run's come from `ck`)
    raw = (ckpt_io.build_model(ck, run_dir).train() if ck else ckpt_io.new_model(mcfg)).to(d.device)
    model = raw
    if d.distributed:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.loop.compile:
        model = torch.compile(model)
    opt = build_optimizer(raw, cfg.optim, d.device)
    progress = BudgetProgress()  # --schedule time: the loop moves it, the schedule reads it
    sched = build_scheduler(opt, cfg.optim, cfg.loop.max_steps, phase["schedule_start"], progress)
    sources, groups = mixture or (None, [[Path(s.path) for s in shards]])
    micro, accum = split_global_batch(cfg.data.global_batch_size, d.world_size, cfg.loop.batch_size,
                                      cfg.loop.grad_accum)
    stream = ShardStream(shards, StreamConfig(batch_size=micro, accum=accum, seed=cfg.loop.seed, rank=d.rank,
                                              world_size=d.world_size, order=cfg.data.shuffle,
                                              overfit_batches=cfg.loop.overfit_batches), sources)
    step, start_batch = 0, 0
    val = _validation_data(cfg, shards, d, log, (stream.sources, groups) if len(stream.sources) > 1 else None,
                           micro)
    remask = _remasker(cfg, shards, log)  # refuses --whole-word without a vocab before anything is written
    _seed_rank(cfg.loop.seed, d)  # dropout differs across ranks, reproducibly
    if ck:
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        apply_rates(opt, sched, cfg.optim, rescale=cfg.optim.schedule == "time")  # the resuming run's --lr, betas, eps, decay
        start_batch = stream.load_state_dict(ck["loader"])
        _restore_rng(ck["rng"], d, step=int(ck["step"]), seed=cfg.loop.seed)
        step = int(ck["step"])
        log.truncate_after(step)
        shape = {k: getattr(mcfg, k) for k in ("layers", "hidden", "heads", "ffn")}
        if shape != cfg.model.shape() or (mcfg.dropout, mcfg.norm) != (cfg.model.dropout_rate, cfg.model.norm):
            log.say(f"note: the model's shape comes from the checkpoint ({shape}, dropout {mcfg.dropout}, "
                    f"{mcfg.norm}-norm); the model flags of this run are ignored")
    elif start:
        step = start.step
        for note in phases.load_weights(raw, start):
            log.say(f"note: {note}")
        if start.optimizer is not None:
            phases.restore_optimizer(start, opt, sched, cfg)
        shape = {k: getattr(mcfg, k) for k in ("layers", "hidden", "heads", "ffn")}
        if shape != cfg.model.shape() or mcfg.norm != cfg.model.norm:
            log.say(f"note: the model's shape comes from {start.source} ({shape}, {mcfg.max_len} positions, "
                    f"{mcfg.norm}-norm); the model flags of this run are ignored")
    if d.is_main:  # all checked: the run directory now
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.remove_partial(run_dir)  # a checkpoint whose writing was killed: never under a final name
    if start and not ck and d.is_main:
        phases.carry_history(start, run_dir, cfg.loop.tensorboard)
    if phase["index"] > 1:
        log.tag = {"phase": phase["name"]}
    if d.is_main:
        note = phases.keep_run_tokenizer(cfg, data, run_dir, start)
        if note:
            log.say(note)
    if d.is_main:
        write_json(run_dir / "config.json", {"train": cfg.to_dict(), "model": mcfg.to_dict(), "data": data,
                                             "world_size": d.world_size, "global_batch": stream.G,
                                             "micro_batch": micro, "grad_accum": accum, "phase": phase})
    log.say(f"{'resuming at step ' + str(step) if ck else 'training'}: {raw.num_params():,} parameters "
            f"({_describe_model(mcfg)}), {len(shards)} shard file(s), "
            f"{stream.steps_per_epoch} batches/epoch/rank, {d.world_size} rank(s) on {d.device.type}, run {run_dir}")
    if cfg.data.global_batch_size:
        log.say(f"global batch {stream.G}: {d.world_size} rank(s) x {micro} examples x {accum} micro-step(s)")
    if len(stream.sources) > 1:
        log.say("mixture: " + ", ".join(f"{s.name} {w}/{stream.interleave.period} of the steps ({s.files} file(s), "
                                         f"{p.per_epoch} steps/epoch)"
                                         for s, w, p in zip(stream.sources, stream.weights, stream.plans)))
    if log.tb_note:
        log.say(log.tb_note)
    if ck:
        log.write({"event": "resume", "step": step})
    elif start and phase["index"] > 1:
        log.say(f"{phase['name']}: from {start.source} at step {step}, "
                f"{'AdamW and schedule carried' if start.optimizer is not None else 'AdamW and schedule restarted'}")
        log.write({"event": "phase", "step": step, "phase": phase["name"], "init_from": start.source})
    run = _Run(cfg, d, raw, model, opt, sched, stream, log, run_dir, data, mcfg, val, step, start_batch)
    run.phase, run.progress, run.remask = phase, progress, remask
    run.warmup_end = phase["schedule_start"] + cfg.optim.warmup_steps
    if d.is_main and step < run.warmup_end > cfg.loop.max_steps:
        _warn(f"the warm-up (--warmup-steps {cfg.optim.warmup_steps}) ends at step {run.warmup_end:,}, after "
              f"--max-steps {cfg.loop.max_steps:,}: the rate never reaches --lr {cfg.optim.lr:g}; lower --warmup-steps")
    if ck:
        run.clock = TrainClock(float(ck.get("train_s", 0.0)), float(ck.get("train_cpu_s", 0.0)))
    return run


def _remasker(cfg: TrainConfig, shards: list, log: MetricsLog) -> Remasker | None:
    """--mask-prob: the training batches' fresh masks (validation keeps the shards' own)."""
    m = cfg.masking
    if m.mask_prob is None:
        return None
    words = vocab_for(shards[0].path, shards[0].meta, cfg.data.vocab)
    remasker = Remasker(m, vocab_from(shards[0].meta, words), cfg.loop.seed)
    if m.whole_word and remasker.vocab.is_continuation is None:
        raise ConfigError(f"--whole-word: no vocab.txt found for {shards[0].path} (its manifest names no token store "
                          f"of its tokenizer here); give --vocab")
    log.say(f"dynamic masking: {m.mask_prob * 100:g}% of each example's tokens, {m.slots(int(shards[0].meta['max_len']))} "
            f"slots, {m.mask_replace}{', whole words' if m.whole_word else ''}; validation keeps the shards' masks")
    return remasker


def _warn(line: str) -> None:
    sys.stderr.write(f"warning: {line}\n")  # one write: ranks sharing stderr never interleave mid-line
    sys.stderr.flush()


def _checkpoint_to_resume(cfg: TrainConfig, run_dir: Path, data: dict, shards: list, d: dist.Dist) -> dict | None:
    latest = ckpt_io.newest(run_dir)
    if latest is not None and not cfg.checkpoint.resume:
        raise ConfigError(f"{run_dir} already holds checkpoints ({latest.name}); pass --resume to continue "
                          f"that run or --out for a new one")
    if latest is None:
        if cfg.checkpoint.resume and d.is_main:  # the same command starts a run and continues it after a preemption
            sys.stderr.write(f"warning: --resume: no checkpoint in {run_dir} yet; starting a new run there\n")
        return None
    ck = ckpt_io.load(latest)
    phases.check_resume(ck, data, shards, latest)  # the same phase only; names --init-from otherwise
    return ck


def _validation_data(cfg: TrainConfig, shards: list, d: dist.Dist, log: MetricsLog, groups: list | None,
                     batch_size: int):
    """(stream, vocab, {source: stream}) for validation, or None when there is none; the per-source
    streams when a mixture's every source has val_ files beside its training files. Runs before the
    run directory is made; files named by --val-shards and --vocab are opened even when validation
    is off, so a wrong path is refused with nothing written, not ignored."""
    validating = bool(cfg.loop.val_interval or cfg.loop.val_minutes)
    wanted = d.is_main and (validating or cfg.data.vocab)  # decodes examples, or checks a named --vocab
    vocab = vocab_for(shards[0].path, shards[0].meta, cfg.data.vocab) if wanted else None
    train_paths = [s.path for s in shards]
    paths = list(cfg.data.val_shards) if cfg.data.val_shards is not None else default_val_shards(train_paths)
    if not validating:
        if cfg.data.val_shards:
            open_shards(paths)
        return None
    if not paths:
        log.say("no validation shards (no val_ files beside the training shards, no --val-shards): skipping validation")
        return None
    val_shards = open_shards(paths)
    _check_shards(cfg, val_shards, d)
    # One tokenizer and length; the strategy may differ (a val stream is its own: `pack` training
    # shards may be scored on another strategy's static masks, as bench.quality compares recipes).
    check_compatible(shards + val_shards, "training and validation shards", same_layout=False)
    stream = val_stream(val_shards, batch_size, d)
    if stream is None:
        log.say("validation shards hold fewer examples than there are ranks: skipping validation")
        return None
    per_source = {}
    mixed = [(s.name, default_val_shards(g)) for s, g in zip(groups[0], groups[1])] if groups else []
    if mixed and cfg.data.val_shards is None and all(p for _, p in mixed):
        for name, p in mixed:
            per_source[name] = val_stream(open_shards(p), batch_size, d)
        per_source = {k: v for k, v in per_source.items() if v is not None}
    return stream, vocab, per_source


def _check_shards(cfg: TrainConfig, shards: list, d: dist.Dist) -> None:
    """Refuse bad data before a step trains on it. Every rank must be given the same files (a node
    whose copy lacks some would train on other data and write checkpoints the others cannot
    resume). Unless --no-verify-shards, each file is checked as `bertprep verify FILE` checks it
    (sha256 against the manifest beside it, settings, name, every example's value ranges) and no
    file its manifest lists is missing; a node's files are shared out among its ranks, and one
    rank's refusal stops them all at once, each with one line."""
    if d.distributed:
        listing = "\n".join(f"{Path(s.path).name} {s.num_examples}" for s in shards).encode()
        mine = torch.tensor([len(shards), sum(s.num_examples for s in shards),
                             int.from_bytes(hashlib.sha256(listing).digest()[:7], "little")], dtype=torch.int64)
        every = dist.all_gather_tensors(mine, d)
        for r, theirs in enumerate(every):
            if not theirs.equal(every[0]):
                raise ConfigError(f"rank {r} was given {int(theirs[0])} shard file(s) of {int(theirs[1]):,} examples, "
                                  f"rank 0 {int(every[0][0])} of {int(every[0][1]):,}: every rank must be given the "
                                  f"same --shards (a machine with an incomplete copy?)")
    if not cfg.data.verify_shards:
        return
    paths = [Path(s.path) for s in shards]
    problem = None
    try:
        check_runs_complete(paths)
        for path in paths[d.local_rank::d.local_world_size]:
            verify_paths([path])
    except BertprepError as e:
        problem = e
    if d.distributed:
        refused = dist.all_reduce_max(torch.tensor([float(problem is not None)], device=d.device), d)
        if refused.item() and problem is None:
            raise ShardFormatError("another rank refused a shard file (its error line names the file)")
    if problem is not None:
        raise problem


def _seed_rank(seed: int, d: dist.Dist) -> None:
    rank_seed = int(np.random.SeedSequence([seed, 1, d.rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
    torch.manual_seed(rank_seed)


def _rng_state(d: dist.Dist) -> dict:
    cpu = dist.all_gather_tensors(torch.get_rng_state(), d)
    cuda = dist.all_gather_tensors(torch.cuda.get_rng_state(d.device), d) if d.device.type == "cuda" else []
    return {"torch": cpu, "cuda": cuda}


def _restore_rng(rng: dict, d: dist.Dist, step: int, seed: int) -> None:
    """Each rank's generators as saved; on another number of ranks (an elastic resume), seeded from
    (seed, step, rank) instead: dropout then differs from the uninterrupted run's, the data does not."""
    if len(rng["torch"]) != d.world_size:
        rank_seed = int(np.random.SeedSequence([seed, 2, step, d.rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
        torch.manual_seed(rank_seed)
        return
    torch.set_rng_state(rng["torch"][d.rank])
    if d.device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state(rng["cuda"][d.rank], d.device)


class _Run:
    """The state of one training run between steps; `loop()` is the training loop proper."""

    def __init__(self, cfg, d, raw, model, opt, sched, stream, log, run_dir, data, mcfg, val, step, start_batch):
        self.cfg, self.d, self.raw, self.model, self.opt, self.sched = cfg, d, raw, model, opt, sched
        self.stream, self.log, self.run_dir, self.data, self.mcfg, self.val = stream, log, run_dir, data, mcfg, val
        self.autocast = dist.autocast_for(cfg.loop.precision, d.device)
        self.last_ckpt: Path | None = ckpt_io.newest(run_dir)
        self.last_val: dict = {}
        self.trace = None
        self.start_step, self.start_batch = step, start_batch
        self.clock = TrainClock()
        self.phase: dict = {}  # set by _prepare; kept in every checkpoint
        self.progress = BudgetProgress()  # set by _prepare: the share of --max-time used, for --schedule time
        self.warmup_end = 0  # set by _prepare: the step at which the warm-up reaches --lr
        self.remask: Remasker | None = None  # set by _prepare: --mask-prob

    def loop(self) -> dict:
        cfg, d, step, start_batch = self.cfg, self.d, self.start_step, self.start_batch
        accum, per_micro = self.stream.cfg.accum, self.stream.cfg.batch_size * d.world_size  # examples per micro-step
        # loss sum, mlm loss sum, mlm count, real tokens (padding is not throughput: packed and split
        # shards of one corpus must compare)
        window = torch.zeros(4, dtype=torch.float64, device=d.device)
        mixed = len(self.stream.sources) > 1  # and then the same sums and a micro-step count per source
        by_source = torch.zeros(len(self.stream.sources), 4, dtype=torch.float64, device=d.device)
        micro, t_window, t_start, waited = 0, time.perf_counter(), time.perf_counter(), 0.0
        total_wait, done_steps, stopped, first_step = 0.0, 0, "max_steps", step
        on_batch = self._tracer() if cfg.data.trace_data else None
        budget_s, every_s = cfg.loop.max_time * 60, cfg.loop.val_minutes * 60  # 0: no limit / no timed validation
        next_val_s = (self.clock.wall_s // every_s + 1) * every_s if every_s else math.inf
        spent = budget_s and self.clock.wall_s >= budget_s  # a resumed run whose time was used up
        check_warmup = bool(budget_s) and d.is_main and step < self.warmup_end <= cfg.loop.max_steps
        loop_s = self.clock.wall_s  # the budget used before this loop (a resumed run)
        with StopRequest() as stop, Prefetcher(self.stream, d.device, start=start_batch, ring=cfg.data.prefetch,
                                               on_batch=on_batch, remask=self.remask) as feed:
            self.clock.start()
            while step < cfg.loop.max_steps and not spent:
                lr = self.opt.param_groups[0]["lr"]
                source = int(self.stream.source_of(feed.consumed)[0]) if mixed else 0  # one per step, on every rank
                for m in range(accum):
                    batch = feed.next()
                    with dist.no_sync(self.model, m < accum - 1), self.autocast():
                        mlm, nsp = self.model(batch["input_ids"], batch["token_type_ids"], batch["length"],
                                              batch["masked_positions"], batch.get("doc_starts"))
                        loss, parts = pretraining_loss(mlm, nsp, batch, accuracy=False)
                    (loss / accum).backward()
                    sums = torch.stack([loss.detach().double(), parts["mlm_loss_sum"].double(),
                                        parts["mlm_count"].double(), batch["length"].sum().double()])
                    window += sums
                    if mixed:
                        by_source[source, :3] += sums[:3]
                        by_source[source, 3] += 1
                    micro += 1
                optimizer_step(self.opt, self.raw.parameters(), cfg.optim.clip)
                step += 1
                done_steps += 1
                halt, train_s = self._agree(stop.requested, self.clock.read()[0])
                out_of_time, val_due = budget_s and train_s >= budget_s, train_s >= next_val_s
                if budget_s:
                    self.progress.fraction = train_s / budget_s
                self.sched.step()  # the next step's rate (--schedule time: from the agreed clock)
                last = step == cfg.loop.max_steps or halt or out_of_time
                if step % cfg.loop.log_interval == 0 or last or step % cfg.checkpoint.ckpt_interval == 0:
                    rec = self._reduce_window(window, micro, step, lr)  # raises NonFiniteLoss
                    if mixed:
                        rec |= self._reduce_sources(by_source)
                    if step % cfg.loop.log_interval == 0 or last:
                        now = time.perf_counter()
                        waited = feed.wait_s
                        total_wait += waited
                        dt = max(now - t_window, 1e-9)
                        rec |= {"tokens_per_s": rec.pop("tokens") / dt, "samples_per_s": micro * per_micro / dt,
                                "data_wait_s": waited, "data_wait_frac": waited / dt, "elapsed_s": now - t_start,
                                "train_s": train_s}
                        self.log.write(rec)
                        self.log.say(train_line(rec))
                        if check_warmup:  # the first window's step rate: can the warm-up end in the budget?
                            check_warmup = False
                            self._warn_warmup(step, done_steps / max(train_s - loop_s, 1e-9), budget_s - train_s)
                        window.zero_()
                        by_source.zero_()
                        micro, t_window, feed.wait_s = 0, time.perf_counter(), 0.0
                paused = time.perf_counter()
                with self.clock.paused():  # validation and checkpoints are not training time
                    if val_due:
                        next_val_s = (train_s // every_s + 1) * every_s
                    on_interval = cfg.loop.val_interval and step % cfg.loop.val_interval == 0
                    if self.val and (on_interval or val_due or (last and not halt)):
                        self._validate(step)
                    if step % cfg.checkpoint.ckpt_interval == 0 or last:
                        self._save(step, feed)
                t_window += time.perf_counter() - paused  # rates count training time only
                if halt:
                    stopped = f"signal {stop.signal_name}"
                    self.log.say(f"{stop.signal_name}: saved {self.last_ckpt} and stopped at step {step}")
                    break
                if out_of_time and step < cfg.loop.max_steps:
                    stopped = "max_time"
                    self.log.say(f"--max-time {cfg.loop.max_time:g} min of training reached at step {step}: "
                                 f"validated, saved {self.last_ckpt}")
                    break
            if spent:
                stopped = "max_time"
                self.log.say(f"--max-time {cfg.loop.max_time:g} min already used by the resumed run: nothing to do")
        if self.trace is not None:
            self.trace.close()
        elapsed = time.perf_counter() - t_start
        summary = {"run_dir": str(self.run_dir), "step": step, "steps_run": done_steps, "stopped": stopped,
                   "checkpoint": str(self.last_ckpt) if self.last_ckpt else None, "elapsed_s": elapsed,
                   "data_wait_frac": total_wait / elapsed if done_steps else 0.0,
                   "params": self.raw.num_params(), "first_step": first_step} | self.last_val
        self.log.write({"event": "end", "step": step, "stopped": stopped})
        return summary

    def _warn_warmup(self, step: int, steps_per_s: float, left_s: float) -> None:
        reach = step + int(steps_per_s * left_s)
        if reach < self.warmup_end:
            _warn(f"at the measured {steps_per_s:.3g} steps/s the --max-time {self.cfg.loop.max_time:g} min budget "
                  f"ends near step {reach:,}, before the warm-up ends at step {self.warmup_end:,}: the rate never "
                  f"reaches --lr {self.cfg.optim.lr:g}; lower --warmup-steps")

    def _agree(self, stop_requested: bool, train_s: float) -> tuple[bool, float]:
        """All ranks act at the same step: any rank's signal stops them all, and the slowest-reading
        rank's clock (the largest) is everyone's, so --max-time, the --val-minutes marks and
        --schedule time's learning rate are decided alike on every rank (one tiny all-reduce)."""
        if not self.d.distributed:
            return bool(stop_requested), train_s
        both = torch.tensor([float(bool(stop_requested)), train_s], dtype=torch.float64, device=self.d.device)
        halt, agreed = dist.all_reduce_max(both, self.d).tolist()
        self.clock.wall_s += agreed - train_s  # this rank's clock becomes the agreed one (what it checkpoints)
        return bool(halt), agreed

    def _reduce_window(self, window: torch.Tensor, micro: int, step: int, lr: float) -> dict:
        sums = dist.all_reduce_sum(window.clone(), self.d).tolist()
        n = max(1, micro) * self.d.world_size
        loss = sums[0] / n
        check_finite(loss, step, self.last_ckpt, "lower --lr, raise --warmup-steps or check the data")
        return {"step": step, "loss": loss, "mlm_loss": sums[1] / max(1.0, sums[2]), "lr": lr, "tokens": sums[3]}

    def _reduce_sources(self, by_source: torch.Tensor) -> dict:
        """Each source's mean loss and MLM loss over the window (the steps it gave), summed over ranks."""
        sums = dist.all_reduce_sum(by_source.clone(), self.d).tolist()
        out = {}
        for src, (loss, mlm, count, micro) in zip(self.stream.sources, sums):
            if micro:
                out[f"loss_{src.name}"] = loss / micro
                out[f"mlm_loss_{src.name}"] = mlm / max(1.0, count)
        return out

    def _validate(self, step: int) -> None:
        stream, vocab, per_source = self.val
        out = validate(self.raw, stream, self.d, max_batches=self.cfg.loop.val_batches, autocast=self.autocast)
        for name, s in per_source.items():
            mine = validate(self.raw, s, self.d, max_batches=self.cfg.loop.val_batches, autocast=self.autocast)
            out |= {f"{k}_{name}": v for k, v in mine.items() if k in ("val_loss", "val_mlm_acc")}
        train_s, train_cpu_s = self.clock.read()
        rec = {"step": step} | out | {"train_s": train_s, "train_cpu_s": train_cpu_s}
        self.last_val = {k: v for k, v in out.items() if k.startswith("val_") and not k.endswith(
            tuple(f"_{n}" for n in per_source))}
        self.log.write(rec)
        self.log.say(val_line(rec))
        if self.d.is_main and self.cfg.loop.val_examples:
            lines = decoded_examples(self.raw, stream, self.d.device, vocab, self.cfg.loop.val_examples, self.autocast)
            with open(self.run_dir / "examples.txt", "a", encoding="utf-8") as f:
                f.write(f"== step {step}\n" + "\n".join(lines) + "\n")
            for line in lines[: 4 * self.cfg.loop.val_examples]:
                self.log.say(line)

    def _save(self, step: int, feed: Prefetcher) -> None:
        payload = {
            "model": self.raw.state_dict(), "model_config": self.mcfg.to_dict(), "data": self.data,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "loader": feed.state_dict(), "rng": _rng_state(self.d), "config": self.cfg.to_dict(),
            "train_s": self.clock.read()[0], "train_cpu_s": self.clock.read()[1], "phase": self.phase,
        }
        if self.d.is_main:
            self.last_ckpt = ckpt_io.save(self.run_dir, step, payload, keep=self.cfg.checkpoint.max_checkpoints)
        dist.barrier(self.d)

    def _tracer(self):
        """--trace-data: each batch's rows to <run>/trace/rank<r>.txt as `index file row row ...`
        (`index file:row file:row ...` under --shuffle global, where a batch reads several files)."""
        folder = self.run_dir / "trace"
        folder.mkdir(parents=True, exist_ok=True)
        self.trace = open(folder / f"rank{self.d.rank}.txt", "a", encoding="utf-8")

        def record(index: int, f, rows: np.ndarray) -> None:
            if np.ndim(f):
                self.trace.write(f"{index} {' '.join(f'{a}:{b}' for a, b in zip(f.tolist(), rows.tolist()))}\n")
            else:
                self.trace.write(f"{index} {f} {' '.join(map(str, rows.tolist()))}\n")
        return record


def _describe_model(mcfg) -> str:
    """`2x128, post-norm` (BERT) or `modern 3x128, window 128, global every 3` for the start line."""
    if mcfg.arch == "modern":
        return f"modern {mcfg.layers}x{mcfg.hidden}, window {mcfg.window}, global every {mcfg.global_every}"
    return f"{mcfg.layers}x{mcfg.hidden}, {mcfg.norm}-norm"
