"""What to train: :class:`SAETrainConfig` (``credo sae train``) and the sweep of :class:`SAESpec` it names.

The recipe is Gemma Scope's (Lieberum et al. 2024): Adam with ``betas = (0, 0.999)`` and ``lr = 7e-5``,
batches of 4,096 tokens scaled so that ``E||x||^2 = 1``, a learning-rate warm-up over the first 1,000 steps,
the sparsity coefficient warmed up linearly from 0 over the first 10,000 steps, and unit-norm decoder rows,
with the learning rate decaying to zero over the final 20% of training (Anthropic's April 2024 update).
The schedules themselves, and how short runs cap the warm-ups, are in :mod:`credo.sae.schedules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from credo.sae.base import ARCHITECTURES, Architecture
from credo.sae.schedules import LRDecay

SELECTION_ARCHITECTURES = ("topk", "batchtopk")
"""Architectures whose sparsity is set by ``k`` rather than a penalty coefficient."""
UNIT_NORM_DECODER = frozenset({"gated", "jumprelu", "topk", "batchtopk"})
"""Architectures trained with unit-norm decoder rows (Gated SAE, Gemma Scope, Gao et al. 2024); the ReLU
baseline weights its L1 penalty by the decoder norms instead, so its decoder is left free."""
DEFAULT_SPARSITY_COEFFICIENTS = {"relu": 0.2, "gated": 0.2, "jumprelu": 2e-3}
"""Starting points in scaled units (``E||x||^2 = 1``), used when no coefficient is given; sweep around them.
JumpReLU: L0 ~ 50 latents at a reconstruction error ~ 0.1 makes one latent worth ~ 0.1 / 50 = 2e-3. ReLU and
Gated: Anthropic's lambda = 5 for inputs scaled to ``E||x||^2 = d_in`` is ``5 / sqrt(d_in)`` here, 0.2 at
d_in = 576."""


@dataclass(frozen=True)
class SAESpec:
    """One SAE of a sweep: its architecture and its sparsity setting (a coefficient, or ``k``)."""

    arch: str
    sparsity_coefficient: float = 0.0
    k: int = 32

    @classmethod
    def parse(cls, text: str) -> SAESpec:
        """``"jumprelu:0.001"`` (architecture and coefficient) or ``"topk:32"`` (architecture and k)."""
        arch, sep, value = text.partition(":")
        arch = arch.strip()
        if arch not in ARCHITECTURES or not sep:
            raise ValueError(f"SAE {text!r}: write arch:value with arch one of {list(ARCHITECTURES)}")
        what = "k" if arch in SELECTION_ARCHITECTURES else "sparsity coefficient"
        try:
            spec = cls(arch, k=int(value)) if what == "k" else cls(arch, sparsity_coefficient=float(value))
        except ValueError:
            spec = None
        if spec is None or spec.k < 1 or spec.sparsity_coefficient < 0:
            raise ValueError(f"SAE {text!r}: {value!r} is not a valid {what}")
        return spec

    def name(self, width: int) -> str:
        """Directory name of the trained SAE, e.g. ``jumprelu_4608_lambda0.001`` or ``topk_4608_k32``."""
        if self.arch in SELECTION_ARCHITECTURES:
            return f"{self.arch}_{width}_k{self.k}"
        return f"{self.arch}_{width}_lambda{self.sparsity_coefficient:g}"


@dataclass
class SAETrainConfig:
    """Train sparse autoencoders on cached activations (``credo sae train``), several SAEs per pass."""

    acts: str = ""
    """Activation store directory (one site of `credo sae harvest`)."""
    out: str = "runs/sae"
    """Output directory: one sub-directory per SAE (cfg.json, model.safetensors, training_log.jsonl)."""
    archs: tuple[Architecture, ...] = ("jumprelu",)
    """Architectures to train; each is trained at every sparsity coefficient (or every k, for topk/batchtopk)."""
    sparsity_coefficients: tuple[float, ...] = ()
    """Sparsity coefficients (lambda, in units where E||x||^2 = 1); empty: a per-architecture starting point."""
    ks: tuple[int, ...] = (32,)
    """Active latents per token for topk and batchtopk."""
    saes: tuple[str, ...] = ()
    """An explicit list instead of the archs x coefficients grid: arch:lambda or arch:k, e.g. jumprelu:0.001,topk:32."""
    width: int = 0
    """Latents per SAE (d_sae); 0: expansion_factor x d_in."""
    expansion_factor: float = 8.0
    """d_sae / d_in when width is 0 (8: 4608 latents on SmolLM2's 576-wide residual stream)."""
    d_in: int = 0
    """Width of the activations; 0: the store's. Needed when training from an iterable of batches."""
    total_tokens: int = 0
    """Training tokens; 0: one pass over the store. More than the store holds: further reshuffled epochs."""
    batch_size: int = 4096
    """Tokens per optimiser step, summed over processes (Gemma Scope: 4096)."""
    lr: float = 7e-5
    """Peak learning rate of Adam (Gemma Scope: 7e-5)."""
    adam_beta1: float = 0.0
    """Adam's beta1 (Gemma Scope: 0, no momentum)."""
    adam_beta2: float = 0.999
    """Adam's beta2."""
    adam_eps: float = 1e-8
    """Adam's epsilon."""
    lr_warmup_steps: int = 1000
    """Linear learning-rate warm-up steps (Gemma Scope: 1,000), capped at max_warmup_fraction of the run."""
    lr_decay: LRDecay = "linear"
    """Decay of the learning rate to zero at the end: linear, cosine, or none (Gemma Scope's constant rate)."""
    lr_decay_fraction: float = 0.2
    """Share of the run, at its end, over which the learning rate decays (Anthropic: the final fifth)."""
    sparsity_warmup_steps: int = 10_000
    """Steps of linear sparsity-coefficient warm-up from 0 (Gemma Scope: 10,000), capped like the lr warm-up."""
    max_warmup_fraction: float = 0.05
    """Each warm-up lasts at most this share of the run, so that short runs train mostly at full strength."""
    target_l0: float = 0.0
    """Steer each penalty SAE's sparsity coefficient so that its L0 lands at this many latents per token
    (credo.sae.target_l0: an integral controller on log lambda, from the given or default coefficient); 0: off."""
    target_l0_gain: float = 0.1
    """Gain g of the target-L0 controller: lambda moves by at most a factor e^g per step."""
    normalise_inputs: bool = True
    """Scale the inputs by one scalar so that E||x||^2 = 1 (kept in the SAE as input_scale)."""
    input_scale_batches: int = 8
    """Batches at the start of the stream over which E||x||^2 is estimated."""
    bandwidth: float = 0.001
    """jumprelu: bandwidth of the threshold's pseudo-derivative (Gemma Scope: 0.001)."""
    theta_init: float = 0.001
    """jumprelu: initial threshold (Gemma Scope: 0.001)."""
    dead_after_tokens: int = 10_000_000
    """A latent is dead if it has not fired in this many tokens (or in the whole run so far, if shorter)."""
    nonfinite: Literal["skip", "error"] = "skip"
    """A batch with NaN or inf: skip it (counted and logged; it still uses up its step) or stop with an error."""
    seed: int = 0
    """Seeds the weight initialisation (the same for every SAE of the sweep) and the data order."""
    buffer_rows: int = 1 << 18
    """Rows of the store's shuffle buffer."""
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    """Dtype of the SAE parameters and of the batches."""
    device: str = "cpu"
    """Torch device; under torchrun with cuda each process takes cuda:LOCAL_RANK."""
    log_every: int = 100
    """Steps between lines of training_log.jsonl and refreshes of the progress bar."""
    checkpoint_every: int = 1000
    """Steps between checkpoints; 0: none. Rerunning the same command resumes from the last one exactly."""
    checkpoint_dir: str = ""
    """Checkpoint directory; empty: <out>/checkpoint."""
    progress: bool = True
    """Show a progress bar with each SAE's L0 and FVU (rank 0 only)."""
    progress_every: float = 30.0
    """Seconds between progress lines when stderr is not a terminal (logs, CI, nohup); a terminal shows a bar."""

    def __post_init__(self) -> None:
        self.archs, self.saes = tuple(self.archs), tuple(self.saes)
        self.sparsity_coefficients, self.ks = tuple(self.sparsity_coefficients), tuple(self.ks)
        bad = [a for a in self.archs if a not in ARCHITECTURES]
        if bad or not (self.archs or self.saes):
            raise ValueError(f"archs {list(bad) or '()'}: choose from {list(ARCHITECTURES)}")
        if any(c < 0 for c in self.sparsity_coefficients) or any(k < 1 for k in self.ks):
            raise ValueError("sparsity coefficients must be >= 0 and ks >= 1")
        if min(self.width, self.d_in, self.total_tokens, self.checkpoint_every) < 0:
            raise ValueError("width, d_in, total_tokens and checkpoint_every must be >= 0")
        positive = (
            "expansion_factor",
            "batch_size",
            "lr",
            "input_scale_batches",
            "dead_after_tokens",
            "log_every",
        )
        if any(not getattr(self, name) > 0 for name in positive):
            raise ValueError(f"{', '.join(positive)} must be > 0")
        if self.progress_every < 0:
            raise ValueError(f"progress_every must be >= 0 seconds, got {self.progress_every}")
        if min(self.lr_warmup_steps, self.sparsity_warmup_steps) < 0:
            raise ValueError("warm-up steps must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1 and self.adam_eps > 0):
            raise ValueError(
                f"Adam needs 0 <= betas < 1 and eps > 0, got {self.adam_beta1}, {self.adam_beta2}"
            )
        if not (0 <= self.lr_decay_fraction <= 1 and 0 <= self.max_warmup_fraction <= 1):
            raise ValueError("lr_decay_fraction and max_warmup_fraction must be in [0, 1]")
        for name, value, allowed in (
            ("lr_decay", self.lr_decay, get_args(LRDecay)),
            ("nonfinite", self.nonfinite, ("skip", "error")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if self.target_l0 < 0 or not self.target_l0_gain > 0:
            raise ValueError(
                f"target_l0 must be >= 0 and target_l0_gain > 0, got {self.target_l0}, {self.target_l0_gain}"
            )
        if self.target_l0 and any(s.arch in SELECTION_ARCHITECTURES for s in self.sae_specs()):
            raise ValueError(
                f"target_l0 steers a sparsity coefficient; {'/'.join(SELECTION_ARCHITECTURES)} SAEs have their L0 "
                "set by k instead: leave them out of the sweep, or drop --target-l0 and set --ks"
            )
        names = [spec.name(1) for spec in self.sae_specs()]
        if len(set(names)) != len(names):
            raise ValueError(f"the sweep names one SAE twice: {names}")

    def sae_specs(self) -> list[SAESpec]:
        """The SAEs to train: ``saes`` if given, else every architecture at every coefficient (or k)."""
        if self.saes:
            return [SAESpec.parse(text) for text in self.saes]
        specs = []
        for arch in self.archs:
            if arch in SELECTION_ARCHITECTURES:
                specs += [SAESpec(arch, k=k) for k in self.ks]
            else:
                coefficients = self.sparsity_coefficients or (DEFAULT_SPARSITY_COEFFICIENTS[arch],)
                specs += [SAESpec(arch, sparsity_coefficient=c) for c in coefficients]
        return specs
