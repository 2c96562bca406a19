"""Training the capsule model and its amortised encoder together on constellations, resumably.

Each step maximises the ELBO (one pose draw; presences summed out exactly, or one binary-concrete draw) of a batch,
averaged per example. Where the model's gradient comes from is ``inference``:

* ``amortised``: the encoder's q, the model and the encoder trained end to end on one objective (the paper's
  unified objective). From a random start this settles where no object explains anything (every point clutter,
  or one broad blob): a failure of amortised inference that the benchmark measures.
* ``vote``: an E-step that does not rely on the encoder: q from pose voting with the model's current parts
  (:func:`~credo.generative.capsule_inference.vote_posterior`), refined for ``refine_steps`` steps with the model
  frozen; the model then takes a gradient step on the ELBO at that q. The encoder learns beside it to amortise
  that refined q (``encoder_objective="distil"``: minimise ``KL(q_refined || q_encoder)``, the wake-phase update
  of wake-sleep with the refined q in place of the posterior) or on its own ELBO (``"elbo"``, the model held
  fixed for that term; from a random start it settles on "every point is clutter").

The point noise ``sigma`` follows a fixed schedule, geometric from ``noise_start`` to ``noise_end`` over the
first ``anneal`` fraction of the steps (coarse to fine: a broad noise lets badly placed parts still feel the
points), then constant; a learned noise grows instead, towards the blob. The training set is
``train_examples`` constellations drawn once from ``seed``; batches follow a permutation per epoch seeded by
``seed + epoch``. Every ``checkpoint_every`` steps the model, encoder, optimiser, step and RNG state go into one
sealed file, so a killed run resumes exactly where it stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from credo.data.constellations import Constellations, generate_constellations
from credo.data.part_scenes import PartScenes, generate_part_scenes
from credo.errors import CheckpointError
from credo.generative.capsule_images import ImageCapsuleConfig, ImageCapsuleModel, ImageEncoder
from credo.generative.capsule_inference import (
    AttentionSetEncoder,
    SetEncoder,
    refine_posterior,
    vote_posterior,
)
from credo.generative.capsules import CapsuleConfig, CapsuleModel, CapsulePosterior
from credo.io import load_torch_sealed, save_torch_sealed, write_json
from credo.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class ConstellationData:
    """How the constellations are drawn (see :func:`credo.data.constellations.generate_constellations`)."""

    rotation_degrees: float = 180.0
    """Rotations uniform in [-this, this] degrees."""
    presence: float = 0.75
    missing: float = 0.0
    clutter: float = 0.0
    noise: float = 0.0

    def generate(self, n: int, seed: int) -> Constellations:
        r = math.radians(self.rotation_degrees)
        return generate_constellations(
            n, presence=self.presence, rotation=(-r, r), missing=self.missing, clutter=self.clutter,
            noise=self.noise, seed=seed,
        )  # fmt: skip


@dataclass
class CapsuleTrainConfig:
    """Train a capsule model and its set encoder on constellations."""

    out: str = ""
    """Output directory: model.pt (weights and config) and checkpoint.pt."""
    num_objects: int = 4
    parts_per_object: int = 5
    hidden: int = 128
    """Width of the set encoder."""
    encoder: Literal["attention", "deep-sets"] = "deep-sets"
    """The amortised encoder: self-attention with a learned query per capsule, or deep sets (mean and max)."""
    data: ConstellationData = field(default_factory=ConstellationData)
    """How the training constellations are drawn."""
    train_examples: int = 20_000
    batch_size: int = 128
    steps: int = 5_000
    lr: float = 1e-3
    presences: Literal["enumerate", "relaxed"] = "enumerate"
    """How the ELBO's expectation over presences is taken: summed exactly over the 2^K presence vectors, or
    by one binary-concrete draw at ``temperature``."""
    temperature: float = 0.5
    inference: Literal["vote", "amortised"] = "vote"
    """Where the model's gradient comes from: voting refined by test-time steps, or the encoder (see the module)."""
    refine_steps: int = 20
    """Test-time steps on the voted q before each model step (``inference="vote"``)."""
    refine_samples: int = 1
    """Pose draws of those steps (fixed within a step)."""
    encoder_objective: Literal["distil", "elbo"] = "distil"
    """With ``inference="vote"``: the encoder learns to output the refined q (minimising
    ``KL(q_refined || q_encoder)``), or maximises its own ELBO."""
    noise_start: float = 0.15
    noise_end: float = 0.05
    anneal: float = 0.7
    """Fraction of the steps over which the point noise goes from ``noise_start`` to ``noise_end``."""
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = ConstellationData(**self.data)
        if self.steps < 1 or self.batch_size < 1 or self.train_examples < self.batch_size:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1 and train_examples >= batch_size; got {self.steps}, "
                f"{self.batch_size}, {self.train_examples}"
            )
        floor = CapsuleConfig.min_noise
        if not (self.noise_start > floor and self.noise_end > floor and 0 < self.anneal <= 1):
            raise ValueError(
                f"need noise_start and noise_end above the floor {floor} and anneal in (0, 1]; got "
                f"{self.noise_start}, {self.noise_end}, {self.anneal}"
            )

    def noise_at(self, step: int) -> float:
        """The point noise ``sigma`` at ``step`` (see the module)."""
        frac = min(1.0, step / max(1.0, self.anneal * self.steps))
        return self.noise_start * (self.noise_end / self.noise_start) ** frac


@dataclass
class TrainedCapsules:
    model: CapsuleModel
    encoder: AttentionSetEncoder | SetEncoder
    history: list[float]
    """Training ELBO per example (the model's objective), averaged over the batches since the last checkpoint."""


def build(cfg: CapsuleTrainConfig) -> tuple[CapsuleModel, AttentionSetEncoder | SetEncoder]:
    torch.manual_seed(cfg.seed)
    model = CapsuleModel(CapsuleConfig(num_objects=cfg.num_objects, parts_per_object=cfg.parts_per_object))
    model.log_noise.requires_grad_(False)  # on the schedule of CapsuleTrainConfig.noise_at
    kind = AttentionSetEncoder if cfg.encoder == "attention" else SetEncoder
    return model, kind(cfg.num_objects, cfg.hidden)


def set_noise(model: CapsuleModel, sigma: float) -> None:
    with torch.no_grad():
        model.log_noise.fill_(math.log(sigma - model.cfg.min_noise))


def posterior_kl(target: CapsulePosterior, q: CapsulePosterior) -> Tensor:
    """``[B]`` ``KL(target || q)`` between two mean-field capsule posteriors: Bernoulli presences, and Gaussian
    poses weighted by the target's presence probability (an absent capsule's pose does not matter)."""
    rho, logit = torch.sigmoid(target.presence_logit), q.presence_logit
    presence = rho * (F.logsigmoid(target.presence_logit) - F.logsigmoid(logit)) + (1 - rho) * (
        F.logsigmoid(-target.presence_logit) - F.logsigmoid(-logit)
    )
    var_t, var_q = target.pose_logvar.exp(), q.pose_logvar.exp()
    pose = 0.5 * (
        q.pose_logvar - target.pose_logvar + (var_t + (target.pose_mean - q.pose_mean).square()) / var_q - 1
    )
    return presence.sum(-1) + (rho * pose.sum(-1)).sum(-1)


def _elbo(model: CapsuleModel, cfg: CapsuleTrainConfig, x, q, mask):
    if cfg.presences == "enumerate":
        return model.elbo_enumerated(x, q, mask, samples=1)
    return model.elbo(x, q, mask, samples=1, relaxed=True, temperature=cfg.temperature)


def train_capsules(cfg: CapsuleTrainConfig, progress: bool = True) -> TrainedCapsules:
    """Train (or resume) per ``cfg``; writes ``<out>/model.pt`` at the end. ``progress``: a bar on a terminal,
    a log line every 30 s otherwise (logger ``credo.progress``)."""
    data = cfg.data.generate(cfg.train_examples, cfg.seed)
    model, encoder = build(cfg)

    def step_fn(step: int, index: Tensor) -> Tensor:
        x, mask = data.points[index], data.mask[index]
        set_noise(model, cfg.noise_at(step))
        amortised = encoder(x, mask)
        if cfg.inference == "amortised":
            return _elbo(model, cfg, x, amortised, mask)
        start = vote_posterior(model, x, mask)
        refined, _ = refine_posterior(
            model, x, start, cfg.refine_steps, mask, samples=cfg.refine_samples, seed=step
        )
        if cfg.encoder_objective == "elbo":
            (-_elbo(model, cfg, x, amortised, mask).mean()).backward()
            model.zero_grad()  # the encoder's ELBO trains the encoder only
        else:
            posterior_kl(refined, amortised).mean().backward()
        return _elbo(model, cfg, x, refined, mask)

    history = resumable_training(cfg, model, encoder, step_fn, "capsule", progress)
    return TrainedCapsules(model, encoder, history)


def resumable_training(cfg, model, encoder, step_fn, name: str, progress: bool) -> list[float]:
    """The loop every capsule trainer shares: Adam on the model's trainable parameters and the encoder's; batches
    of ``cfg.batch_size`` from a permutation of ``cfg.train_examples`` seeded by ``cfg.seed + epoch``;
    ``step_fn(step, index)`` gives the batch's ELBO ``[B]`` (having backpropagated anything else it trains), whose
    mean is maximised. A sealed checkpoint every ``cfg.checkpoint_every`` steps resumes exactly; the end writes
    ``model.pt`` and ``training.json``. Returns the history of mean training ELBOs per checkpoint interval."""
    if not cfg.out:
        raise ValueError("name an output directory (out)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad] + list(encoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    ckpt = out / "checkpoint.pt"
    step, history = 0, []
    fingerprint = asdict(cfg)
    fingerprint.pop("out")
    if ckpt.exists():
        state = load_torch_sealed(ckpt, f"delete {ckpt} to train from scratch")
        if state["config"] != fingerprint:
            raise CheckpointError(
                f"{ckpt} was written for another configuration; delete {out} or choose another --out"
            )
        model.load_state_dict(state["model"])
        encoder.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["rng"])
        log.info("resuming %s training from %s at step %d/%d", name, ckpt, step, cfg.steps)
    per_epoch = cfg.train_examples // cfg.batch_size
    bar = Progress(cfg.steps, f"{name} training", "step", initial=step, enabled=progress)
    window: list[float] = []  # this checkpoint interval's batch ELBOs (a resume starts at a checkpoint)
    try:
        while step < cfg.steps:
            epoch, i = divmod(step, per_epoch)
            order = torch.randperm(
                cfg.train_examples, generator=torch.Generator().manual_seed(cfg.seed + epoch)
            )
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            opt.zero_grad()
            elbo = step_fn(step, index)
            loss = -elbo.mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the {name} ELBO became {float(loss)} at step {step}; lower --lr (now {cfg.lr:g}) and "
                    f"delete {out}"
                )
            loss.backward()
            opt.step()
            step += 1
            bar.update()
            window.append(float(elbo.detach().mean()))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                history.append(sum(window) / len(window))
                window.clear()
                log.info("%s step %d/%d: ELBO %.3f per example", name, step, cfg.steps, history[-1])
                bar.update(0, postfix=f"ELBO {history[-1]:.2f}")
                save_torch_sealed(
                    ckpt,
                    {
                        "config": fingerprint,
                        "model": model.state_dict(),
                        "encoder": encoder.state_dict(),
                        "optimizer": opt.state_dict(),
                        "step": step,
                        "history": history,
                        "rng": torch.get_rng_state(),
                    },
                )
    finally:
        bar.close(finished=step >= cfg.steps)
    save_torch_sealed(
        out / "model.pt",
        {"config": fingerprint, "model": model.state_dict(), "encoder": encoder.state_dict()},
    )
    write_json(out / "training.json", {"config": fingerprint, "elbo_history": history})
    return history


@dataclass
class PartSceneData:
    """How the part scenes are drawn (see :func:`credo.data.part_scenes.generate_part_scenes`)."""

    source: Literal["digits", "fashion-mnist"] = "digits"
    """Where the part templates are cut from."""
    canvas: int = 40
    rotation_degrees: float = 45.0
    presence: float = 0.75
    noise: float = 0.0
    template_seed: int = 0
    """Picks the part templates: the same for training and test scenes."""

    def generate(self, n: int, seed: int) -> PartScenes:
        r = math.radians(self.rotation_degrees)
        return generate_part_scenes(
            n, source=self.source, canvas=self.canvas, presence=self.presence, rotation=(-r, r), noise=self.noise,
            seed=seed, template_seed=self.template_seed,
        )  # fmt: skip


@dataclass
class ImageCapsuleTrainConfig:
    """Train an image capsule model and its CNN encoder end to end on the ELBO (the paper's unified objective:
    the encoder's q, presences summed out exactly, one pose draw per step)."""

    out: str = ""
    num_objects: int = 4
    parts_per_object: int = 5
    template_size: int = 11
    hidden: int = 128
    data: PartSceneData = field(default_factory=PartSceneData)
    train_examples: int = 20_000
    batch_size: int = 64
    steps: int = 5_000
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = PartSceneData(**self.data)
        if self.steps < 1 or self.batch_size < 1 or self.train_examples < self.batch_size:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1 and train_examples >= batch_size; got {self.steps}, "
                f"{self.batch_size}, {self.train_examples}"
            )


def build_image(cfg: ImageCapsuleTrainConfig) -> tuple[ImageCapsuleModel, ImageEncoder]:
    torch.manual_seed(cfg.seed)
    model = ImageCapsuleModel(
        ImageCapsuleConfig(
            num_objects=cfg.num_objects, parts_per_object=cfg.parts_per_object, template_size=cfg.template_size,
            canvas=cfg.data.canvas,
        )
    )  # fmt: skip
    return model, ImageEncoder(cfg.num_objects, cfg.data.canvas, cfg.hidden)


def train_image_capsules(cfg: ImageCapsuleTrainConfig, progress: bool = True) -> TrainedCapsules:
    """Train (or resume) the image model per ``cfg`` (see :func:`resumable_training`)."""
    data = cfg.data.generate(cfg.train_examples, cfg.seed)
    model, encoder = build_image(cfg)

    def step_fn(step: int, index: Tensor) -> Tensor:
        x = data.images[index]
        return model.elbo_enumerated(x, encoder(x), samples=1)

    history = resumable_training(cfg, model, encoder, step_fn, "image capsule", progress)
    return TrainedCapsules(model, encoder, history)


def load_image_capsules(out: str | Path) -> tuple[ImageCapsuleTrainConfig, ImageCapsuleModel, ImageEncoder]:
    """The config, model and encoder saved by :func:`train_image_capsules` in ``out``."""
    path = Path(out) / "model.pt"
    state = load_torch_sealed(
        path, f"delete it and rerun the training command (it resumes from {Path(out) / 'checkpoint.pt'})"
    )
    cfg = ImageCapsuleTrainConfig(out=str(out), **state["config"])
    model, encoder = build_image(cfg)
    model.load_state_dict(state["model"])
    encoder.load_state_dict(state["encoder"])
    return cfg, model.eval(), encoder.eval()


def load_capsules(
    out: str | Path,
) -> tuple[CapsuleTrainConfig, CapsuleModel, AttentionSetEncoder | SetEncoder]:
    """The config, model and encoder saved by :func:`train_capsules` in ``out``."""
    path = Path(out) / "model.pt"
    fix = f"delete it and rerun the training command (it resumes from {Path(out) / 'checkpoint.pt'})"
    state = load_torch_sealed(path, fix)
    cfg = CapsuleTrainConfig(out=str(out), **state["config"])
    model, encoder = build(cfg)
    model.load_state_dict(state["model"])
    encoder.load_state_dict(state["encoder"])
    set_noise(model, cfg.noise_at(cfg.steps))
    return cfg, model.eval(), encoder.eval()
