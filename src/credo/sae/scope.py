"""A whole-model scope (``credo sae scope``): a JumpReLU SAE at every chosen layer and sub-layer site, trained
from one forward pass of the model per batch, as Gemma Scope trains its suites (Lieberum et al. 2024).

Each global batch of windows goes through the model once (:class:`~credo.sae.scope_stream.ScopeStream`, stopped
at the deepest site), and every site's activations train that site's SAE with the recipe of
:class:`~credo.sae.train.SAETrainer` (one trainer per site, each with its own input scale, schedule and
checkpoint). With ``target_l0`` set, each site's sparsity coefficient is steered to that L0
(:mod:`credo.sae.target_l0`), so one flag gives every site a comparable SAE although their scales differ widely.

Resuming is exact at any point. The batch stream is a function of the step, and every site's trainer
checkpoints at the same steps; a run killed while those checkpoints were being written has some sites a
checkpoint ahead of others, so a rerun restarts the stream at the earliest site's step and each site trains
only on the batches it has not seen. Layout of ``out/``::

    scope_config.json                          the configuration (a rerun with another one is refused)
    train/<site>/<sae>/                        credo-format SAEs with their training_log.jsonl
    checkpoint/<site>/checkpoint.pt            each site's trainer state
    acts/<site>/                               with --cache: the streamed activations as an activation store
    layer_{L}/{kind}/width_{W}/average_l0_{N}/ the release (:mod:`credo.sae.scope_release`), and index.json
    scope_eval.json, scope_eval.csv            the evaluation pass (:mod:`credo.sae.scope_evaluate`)
    scope_report.html                          its layer x site heat maps
    timing.json                                seconds of training (this run: waiting for activations, SAE
                                               steps), of the evaluation; resident memory along the run
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from credo.config import config_to_dict
from credo.distributed import distributed_context
from credo.io import read_json, write_json
from credo.progress import Progress, notice
from credo.sae.sites import KINDS

log = logging.getLogger(__name__)

SITE_KINDS = {
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "attn_z": "attn.hook_z",
}
"""Short site names of ``--sites`` and the hook kinds they stand for (:mod:`credo.sae.sites`)."""
_VOLATILE = ("progress", "progress_every", "log_every", "device", "out")


@dataclass
class ScopeConfig:
    """Train a JumpReLU SAE at every chosen site of a model from one forward pass per batch (``credo sae scope``)."""

    model: str = "smollm2"
    """Model: smollm2, minilm, or a local Hugging Face model directory."""
    layers: str = "all"
    """Layers: all, a list (0,6,12) or ranges (0-14)."""
    sites: tuple[str, ...] = ("resid_post", "attn_out", "mlp_out")
    """Sub-layer sites at every layer: resid_post, attn_out, mlp_out, attn_z."""
    width: int = 2304
    """Latents per SAE."""
    target_l0: float = 50.0
    """Steer every SAE's sparsity coefficient to this L0 (credo.sae.target_l0); 0: keep sparsity_coefficient fixed."""
    target_l0_gain: float = 0.1
    """Gain of the target-L0 controller (lambda moves by at most a factor e^gain per step)."""
    sparsity_coefficient: float = 2e-3
    """lambda of every SAE (the controller's starting point under target_l0), in units where E||x||^2 = 1."""
    tokens: int = 250_000
    """Training tokens per SAE (the corpus is reshuffled and reread if it holds fewer)."""
    corpus: str = "kjv"
    """Text: kjv, python-docs, a .txt file or a directory of .txt / .rst.txt files."""
    context_size: int = 128
    """Tokens per window, including the BOS token (its position is not trained on)."""
    held_out: float = 0.05
    """Fraction of windows at the end of the corpus kept out of training, for evaluation."""
    batch_size: int = 1024
    """Tokens per optimiser step (Gemma Scope: 4096, over billions of tokens; 1024 gives 250k tokens 244 steps)."""
    lr: float = 5e-4
    """Peak learning rate of Adam (Gemma Scope: 7e-5 over ~10^5 steps; 5e-4 suits runs of hundreds of steps)."""
    lr_warmup_steps: int = 1000
    """Learning-rate warm-up steps, capped at 5% of the run."""
    sparsity_warmup_steps: int = 10_000
    """Sparsity-coefficient warm-up steps, capped at 5% of the run; the controller acts after it."""
    lr_decay: Literal["linear", "cosine", "none"] = "linear"
    """Decay of the learning rate to zero over the last 20% of training."""
    parallel: Literal["sites", "data"] = "sites"
    """Under torchrun: sites (each rank runs the model on its share of every batch, the activations are sent to
    the rank that owns each site, which trains it on the whole batch) or data (every rank trains every SAE on
    its rows of each batch, gradients all-reduced). Ignored in one process."""
    cache: bool = False
    """Also write every site's activations, as they stream, to an activation store under out/acts/<site> (the
    first epoch's rows, in stream order), for training other SAEs on them later with credo sae train."""
    cache_shard_tokens: int = 65536
    """Rows per shard file of the --cache stores."""
    chunk_windows: int = 64
    """Windows per shuffled chunk of the stream (memory: one chunk per site)."""
    harvest_batch_size: int = 8
    """Windows per forward pass of the model."""
    seed: int = 0
    """Seeds the SAEs' initialisation and the data order."""
    dtype: Literal["float32", "float64"] = "float32"
    """Dtype of the SAEs and of the activations they read."""
    device: str = "cpu"
    """Torch device of the model and the SAEs."""
    eval_tokens: int = 16_384
    """Held-out tokens of the evaluation pass after training (every site's L0, FVU, delta LM loss, KL, loss
    recovered, dead and dense fractions; scope_report.html); 0: no evaluation."""
    eval_batch_size: int = 4
    """Windows per forward pass of the evaluation."""
    checkpoint_every: int = 50
    """Steps between checkpoints of every site; 0: none."""
    log_every: int = 10
    """Steps between lines of each SAE's training_log.jsonl."""
    out: str = "scope"
    """Output directory (see credo.sae.scope); rerunning the same command resumes."""
    progress: bool = True
    """Show progress (a bar on a terminal, a line every progress_every seconds otherwise)."""
    progress_every: float = 30.0
    """Seconds between progress lines when stderr is not a terminal."""

    def __post_init__(self) -> None:
        self.sites = tuple(self.sites)
        bad = [s for s in self.sites if s not in SITE_KINDS]
        if bad or not self.sites:
            raise ValueError(f"--sites {','.join(bad) or '(none)'}: choose from {', '.join(SITE_KINDS)}")
        parse_layers(self.layers, None)  # a malformed --layers fails before anything loads
        if self.width < 1 or self.tokens < 1 or self.batch_size < 1 or self.context_size < 2:
            raise ValueError("width, tokens and batch_size must be >= 1, context_size >= 2")
        if self.target_l0 < 0 or self.target_l0 >= self.width:
            raise ValueError(
                f"--target-l0 {self.target_l0:g} must be in [0, width={self.width}): an L0 is a count of the "
                "latents firing per token, at most all of them; lower it or raise --width"
            )
        if self.tokens < self.batch_size:
            raise ValueError(f"--tokens {self.tokens} is less than one batch of {self.batch_size}")

    def site_names(self, n_layers: int) -> list[str]:
        """Every site of the scope, layer by layer in forward order."""
        kinds = sorted((SITE_KINDS[s] for s in self.sites), key=KINDS.index)
        return [f"blocks.{layer}.{kind}" for layer in parse_layers(self.layers, n_layers) for kind in kinds]


def parse_layers(text: str, n_layers: int | None) -> list[int]:
    """``all``, ``0,6,12`` or ``0-14,20`` as a sorted list of layers; checked against ``n_layers`` if known."""
    text = str(text).strip()
    if text == "all":
        if n_layers is None:
            return []
        return list(range(n_layers))
    layers: set[int] = set()
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            layers.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--layers {text!r}: write all, a list (0,6,12) or ranges (0-14)") from None
    if not layers or min(layers) < 0:
        raise ValueError(f"--layers {text!r}: layers are numbered from 0")
    if n_layers is not None and max(layers) >= n_layers:
        raise ValueError(
            f"--layers {text!r}: the model has {n_layers} layers, so valid layers are 0..{n_layers - 1}"
        )
    return sorted(layers)


class ScopeTrainer:
    """Trains the scope of ``cfg`` (module docstring). ``model`` and ``tokenizer`` may be given already loaded."""

    def __init__(self, cfg: ScopeConfig, model=None, tokenizer=None):
        from credo.sae.corpus import load_corpus, split_windows, tokenize_windows
        from credo.sae.harvest import check_layers, drops_bos
        from credo.sae.models import layer_count, load_causal_lm, model_name
        from credo.sae.scope_stream import ScopeStream
        from credo.sae.sites import find_layers, site_width
        from credo.sae.train import SAETrainer

        self.cfg = cfg
        self.rank, self.world = distributed_context()
        if model is None:
            n = layer_count(cfg.model)
            if n is not None:  # a bad --layers costs no load time
                check_layers(cfg.model, cfg.site_names(n))
            model, tokenizer = load_causal_lm(cfg.model)
        self.model = model.to(cfg.device).eval()
        self.sites = cfg.site_names(len(find_layers(model)[1]))
        # sites mode: round-robin in forward order, so each rank gets early and late layers alike
        self.owners = (
            {s: i % self.world for i, s in enumerate(self.sites)}
            if self.world > 1 and cfg.parallel == "sites"
            else None
        )
        if self.rank == 0:
            self._check_out()
        self._barrier()
        windows = tokenize_windows(tokenizer, load_corpus(cfg.corpus), cfg.context_size)
        train, held = split_windows(windows, cfg.held_out)
        self.held_out_windows = held
        drop = drops_bos(tokenizer, train, True)
        dtype = getattr(torch, cfg.dtype)
        widths = {site: site_width(self.model, site) for site in self.sites}
        self.stream = ScopeStream(
            self.model, train, self.sites, cfg.batch_size, cfg.seed, cfg.chunk_windows, cfg.harvest_batch_size,
            drop, dtype, self.owners, widths,
        )  # fmt: skip
        self.total_steps = cfg.tokens // cfg.batch_size
        name = model_name(cfg.model)
        corpus = {"corpus": f"{cfg.corpus} (held out: last {cfg.held_out:g} of windows)"}
        self.trainers = {
            site: SAETrainer(
                self.site_config(site, widths[site]),
                source=self.stream,
                provenance={"model": name, "site": site, "context_size": cfg.context_size, "harvest": corpus},
                distributed=self.owners is None,  # a site's owner trains it alone, on whole batches
            )
            for site in self.stream.local_sites
        }  # fmt: skip

    def site_config(self, site: str, d_in: int):
        """The :class:`~credo.sae.train_config.SAETrainConfig` of one site's SAE."""
        from credo.sae.train_config import SAETrainConfig

        c, out = self.cfg, Path(self.cfg.out)
        return SAETrainConfig(
            out=str(out / "train" / site), saes=(f"jumprelu:{c.sparsity_coefficient:g}",), width=c.width,
            d_in=d_in, total_tokens=c.tokens, batch_size=c.batch_size, lr=c.lr, lr_warmup_steps=c.lr_warmup_steps,
            lr_decay=c.lr_decay, sparsity_warmup_steps=c.sparsity_warmup_steps, target_l0=c.target_l0,
            target_l0_gain=c.target_l0_gain, seed=c.seed, dtype=c.dtype, device=c.device,
            log_every=c.log_every, checkpoint_every=c.checkpoint_every,
            checkpoint_dir=str(out / "checkpoint" / site), progress=False,
        )  # fmt: skip

    def _check_out(self) -> None:
        """Refuse an output directory that holds another scope's configuration; record this one."""
        path = Path(self.cfg.out) / "scope_config.json"
        now = {k: v for k, v in config_to_dict(self.cfg).items() if k not in _VOLATILE}
        if path.exists():
            fix = f"delete {path.parent} to start over, or choose another --out"
            then = read_json(path, fix)
            changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
            if changed:
                shown = ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in changed)
                raise ValueError(f"{path.parent} holds a scope trained with other settings ({shown}); {fix}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, now)

    def run(self, on_step=None) -> Path:
        """Train every site's SAE to the end (resuming where each stopped), then write the release; returns
        the release's ``index.json``. ``on_step(steps_done)`` is called after every step (tests kill from it)."""
        from credo.sae.scope_release import write_release

        began = time.perf_counter()
        steps = {site: t.begin() for site, t in self.trainers.items()}
        start = self._all_min(min(steps.values(), default=self.total_steps))
        if start and self.rank == 0:
            notice("resuming the scope in %s at step %d/%d", self.cfg.out, start, self.total_steps)
        self._set_input_scales([site for site, s in steps.items() if s == 0])
        cache_rows = min(self.total_steps * self.cfg.batch_size, self.stream.rows_per_epoch)
        writers = self._cache_writers() if self.cfg.cache else {}
        writers = {site: w for site, w in writers.items() if not w.complete}
        # a store behind the trainers (its last shard lost in a kill) restarts the stream earlier; they wait
        if self.cfg.cache:
            behind = [
                w.source_tokens // self.cfg.batch_size
                for w in writers.values()
                if w.source_tokens < cache_rows
            ]
            start = self._all_min(min([start, *behind]))
        bar = Progress(
            self.total_steps, f"scope of {len(self.sites)} SAEs", "step", initial=start,
            every=self.cfg.progress_every, enabled=self.cfg.progress and self.rank == 0,
        )  # fmt: skip
        data_parallel = self.world > 1 and self.owners is None
        batches = self.stream.batches(start)
        stream_s = sae_s = 0.0  # waiting for the model's activations (and their exchange); the SAEs' steps
        memory = []
        for step in range(start, self.total_steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            shown = None
            for site, trainer in self.trainers.items():
                if trainer.step == step:  # a site already past this batch (checkpointed later) waits
                    x = batch[site][self.rank :: self.world] if data_parallel else batch[site]
                    summary = trainer.advance(x, step)
                    shown = shown if summary is None else f"{site}: {summary}"
            stream_s, sae_s = stream_s + t1 - t0, sae_s + time.perf_counter() - t1
            position = step * self.cfg.batch_size
            for site, w in writers.items():
                have = w.appended - position  # rows of this batch the store holds already
                if position < cache_rows and have < self.cfg.batch_size:
                    w.append(batch[site][max(have, 0) : cache_rows - position])
            if step % max(1, self.total_steps // 20) == 0 or step == self.total_steps - 1:
                memory.append([step + 1, resident_mb()])
            bar.update(1, shown)
            if on_step is not None:
                on_step(step + 1)
        bar.close()
        for w in writers.values():
            w.finish()
        saved = {site: trainer.finish()[0] for site, trainer in self.trainers.items()}
        trained_s = time.perf_counter() - began
        index = Path(self.cfg.out) / "index.json"
        sent = [self.stream.bytes_sent]
        if self.world > 1:  # every rank's SAEs and traffic, on rank 0
            everyone: list = [None] * self.world
            dist.all_gather_object(everyone, (saved, self.stream.bytes_sent))
            saved = {site: path for part, _ in everyone for site, path in part.items()}
            saved = {site: saved[site] for site in self.sites}
            sent = [b for _, b in everyone]
        if self.rank == 0:
            write_release(self.cfg.out, saved)
            steps_run = max(1, self.total_steps - start)
            timing = {
                "train_s": trained_s, "steps_this_run": self.total_steps - start, "eval_s": None,
                "stream_s": stream_s, "sae_steps_s": sae_s, "resident_mb_by_step": memory,
                "processes": self.world, "parallel": self.cfg.parallel if self.world > 1 else None,
                "activation_bytes_sent_per_step_per_rank": [b / steps_run for b in sent],
            }  # fmt: skip
            if self.cfg.eval_tokens:
                began = time.perf_counter()
                self.evaluate(saved)
                timing["eval_s"] = time.perf_counter() - began
            write_json(Path(self.cfg.out) / "timing.json", timing)
        self._barrier()
        return index

    def _cache_writers(self) -> dict:
        """One activation store per site this rank receives, under out/acts/<site> (resumed if it exists)."""
        from credo.sae.models import model_name
        from credo.sae.writer import ActivationWriter

        corpus = {
            "corpus": f"{self.cfg.corpus} (held out: last {self.cfg.held_out:g} of windows)",
            "exclude_bos": bool(self.stream.first),
            "order": f"credo sae scope stream, seed {self.cfg.seed}",
        }
        return {
            site: ActivationWriter(
                Path(self.cfg.out) / "acts" / site,
                model_name(self.cfg.model),
                site,
                self.stream.widths[site],
                shard_tokens=self.cfg.cache_shard_tokens,
                context_size=self.cfg.context_size,
                harvest=corpus,
            )
            for site in self.stream.local_sites
        }

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _all_min(self, value: int) -> int:
        """The smallest ``value`` over ranks (the step every rank resumes from)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t)

    def evaluate(self, saved: dict[str, Path]) -> Path:
        """The evaluation pass (:mod:`credo.sae.scope_evaluate`) on the first ``eval_tokens`` held-out
        tokens; writes scope_eval.json / .csv and scope_report.html, returns the report's path."""
        from credo.sae.base import SparseAutoencoder
        from credo.sae.scope_evaluate import evaluate_scope, training_dead_fraction, write_scope_report

        per_window = self.held_out_windows.shape[1] - 1
        windows = self.held_out_windows[: max(1, -(-self.cfg.eval_tokens // per_window))]
        saes = {site: SparseAutoencoder.load(path, self.cfg.device).eval() for site, path in saved.items()}
        table = evaluate_scope(
            self.model, saes, windows, self.cfg.eval_batch_size, progress=self.cfg.progress
        )
        for site, path in saved.items():
            table[site]["dead_fraction_training"] = training_dead_fraction(path)
        title = f"Scope of {len(saes)} SAEs: {self.cfg.model}, width {self.cfg.width}"
        return write_scope_report(self.cfg.out, table, title)

    def _set_input_scales(self, sites: list[str]) -> None:
        """``s = 1 / sqrt(mean ||x||^2)`` per site over the stream's first batches (as many as a trainer's
        ``input_scale_batches``, at most the run); only sums are kept, so memory does not grow with sites.
        Under torchrun every rank reads those batches (the stream is collective) if any rank needs them."""
        from credo.sae.train_config import SAETrainConfig
        from credo.sae.train_source import scale_sums

        if self._all_min(0 if sites else 1):
            return  # no rank has a fresh site
        n = min(SAETrainConfig.input_scale_batches, self.total_steps)
        sums = {site: torch.zeros(2, dtype=torch.float64) for site in sites}
        for _, batch in zip(range(n), self.stream.batches(0), strict=False):
            for site in sites:
                sums[site] += scale_sums(batch[site])
        for site in sites:
            total, count = sums[site].tolist()
            if not (count and total > 0):
                raise ValueError(f"cannot normalise the activations at {site}: their mean squared norm is 0")
            self.trainers[site].set_input_scale((total / count) ** -0.5)


def resident_mb() -> float:
    """This process's resident memory in MB (Linux; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_scope(cfg: ScopeConfig) -> Path:
    """``credo sae scope``: train the scope and write its release; returns the release's index.json."""
    return ScopeTrainer(cfg).run()
