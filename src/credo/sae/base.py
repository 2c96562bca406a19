"""What every sparse autoencoder shares: its config, its output, and the module the architectures build on.

Notation: ``x`` is a batch of raw activations ``[B, d_in]``, ``s`` the scalar buffer ``input_scale``.
Weights use the SAELens / Gemma Scope layout, ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]``, ``b_dec [d_in]``, so every file format is a rename, never a transpose.

**Scaling rule.** The papers train on activations multiplied by one scalar so that ``E||s x||^2 = 1`` and
quote their hyperparameters (sparsity coefficient, JumpReLU bandwidth and initial threshold) in those
units. An SAE here works in scaled units internally and in raw units at its surface:
``encode(x)`` encodes ``s x``; ``decode(f) = (f W_dec + b_dec) / s``; ``forward(x).x_hat`` is raw while
its losses are in scaled units. :meth:`SparseAutoencoder.fold_input_scale` rewrites
``W_enc <- s W_enc``, ``W_dec <- W_dec / s``, ``b_dec <- b_dec / s`` and sets ``s = 1``. It is the same
for every architecture, because each one's latent pre-activations are affine in ``s x - b_dec`` (or in
``s x``): they, and so thresholds, gates and ``b_enc``, are unchanged.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar, get_args

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from credo.config import config_from_dict, config_to_dict
from credo.errors import CheckpointError, CorruptFileError
from credo.io import atomic_write_bytes, read_json, sha256_bytes, write_json

log = logging.getLogger(__name__)

Architecture = Literal["relu", "gated", "jumprelu", "topk", "batchtopk"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class SAEFormatError(CorruptFileError):
    """A saved SAE is missing tensors, has the wrong shapes, or was written for something credo cannot run
    (a ``ValueError``, like every :class:`~credo.errors.CorruptFileError`)."""


WEIGHTS_DIGEST_KEY = "weights_sha256"
"""The ``cfg.json`` key holding the SHA-256 of ``model.safetensors`` (beside the :class:`SAEConfig` fields)."""


def parse_safetensors(data: bytes, path: Path, fix: str) -> dict[str, Tensor]:
    """The tensors in ``data``, the bytes of the safetensors file ``path``; damaged bytes raise
    :class:`SAEFormatError` naming ``path`` and ``fix``."""
    try:
        return load_safetensors(data)
    except Exception as err:  # safetensors raises its own SafetensorError for a damaged header or body
        raise SAEFormatError(f"{path} is not a readable safetensors file ({err}); {fix}") from err


@dataclass
class SAEConfig:
    """One sparse autoencoder: its size, architecture, per-architecture hyperparameters, and provenance."""

    d_in: int = 576
    """Width of the activations the SAE reads (576: SmolLM2-135M's residual stream)."""
    d_sae: int = 4608
    """Number of latents, the dictionary size."""
    arch: Architecture = "jumprelu"
    """relu (L1 baseline), gated (Gated SAE), jumprelu (Gemma Scope), topk, or batchtopk."""
    k: int = 32
    """topk: active latents per example; batchtopk: active latents per example on average over a batch."""
    bandwidth: float = 0.001
    """jumprelu: width epsilon of the rectangle kernel in the threshold's pseudo-derivative (scaled units)."""
    theta_init: float = 0.001
    """jumprelu: initial threshold of every latent (scaled units)."""
    log_threshold: bool = False
    """jumprelu: learn log(theta) instead of theta; this changes what Adam's learning rate means."""
    threshold_rate: float = 0.01
    """batchtopk: weight of each training batch in the running estimate of the inference threshold."""
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    """Dtype of the parameters."""
    seed: int = 0
    """Seed of the weight initialisation."""
    model_name: str = ""
    """Model whose activations the SAE reads (SAELens model_name)."""
    hook_name: str = ""
    """Site in the model the activations come from (SAELens hook_name)."""
    hook_layer: int | None = None
    """Layer index of that site (SAELens hook_layer); None when unknown or not a layer."""
    context_size: int | None = None
    """Tokens per sequence when the activations were harvested (SAELens context_size)."""
    dataset: str = ""
    """Text the activations were harvested from (SAELens dataset_path)."""
    prepend_bos: bool = True
    """Whether each harvested sequence began with a BOS token (SAELens prepend_bos)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.arch!r}; choose one of {list(ARCHITECTURES)}")
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be >= 1, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.arch in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"{self.arch} needs 1 <= k <= d_sae={self.d_sae}, got k={self.k}")
        if not (self.bandwidth > 0 and self.theta_init > 0):
            raise ValueError(
                f"bandwidth and theta_init must be > 0, got {self.bandwidth} and {self.theta_init}"
            )
        if not 0 < self.threshold_rate <= 1:
            raise ValueError(f"threshold_rate must be in (0, 1], got {self.threshold_rate}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {list(DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


class SAEOutput(NamedTuple):
    """What :meth:`SparseAutoencoder.forward` returns for a batch."""

    x_hat: Tensor
    """``[B, d_in]`` reconstruction, in raw units (like the input)."""
    feature_acts: Tensor
    """``[B, d_sae]`` latent activations f."""
    loss: Tensor
    """Scalar training loss: reconstruction + sparsity + auxiliary."""
    reconstruction_loss: Tensor
    """``||s x - s x_hat||^2`` summed over d_in, averaged over the batch (scaled units)."""
    sparsity_loss: Tensor
    """The architecture's sparsity penalty times the coefficient (zero for TopK and BatchTopK)."""
    aux_loss: Tensor
    """The architecture's auxiliary loss (the Gated SAE's L_aux; zero otherwise)."""
    l0: Tensor
    """Mean number of nonzero latents per example (detached)."""


SAE_ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {}
_SAE = TypeVar("_SAE", bound="SparseAutoencoder")


def register_sae(name: str) -> Callable[[type[_SAE]], type[_SAE]]:
    """Class decorator: make an architecture buildable by name (``SAEConfig.arch``, ``cfg.json``)."""

    def wrap(cls: type[_SAE]) -> type[_SAE]:
        cls.arch = name
        SAE_ARCHITECTURES[name] = cls
        return cls

    return wrap


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of the architecture ``cfg.arch``."""
    return SAE_ARCHITECTURES[cfg.arch](cfg)


def unit_mean_squared_norm_scale(x: Tensor) -> float:
    """The scalar ``s`` with ``mean ||s x_b||^2 = 1`` over the rows of ``x`` ``[N, d_in]``."""
    mean_sq = x.double().pow(2).sum(-1).mean().item()
    if not math.isfinite(mean_sq) or mean_sq <= 0:
        raise ValueError(f"cannot normalise activations whose mean squared norm is {mean_sq}")
    return 1.0 / math.sqrt(mean_sq)


class SparseAutoencoder(nn.Module, ABC):
    """Base of every architecture: ``f = encode(x)``, ``x_hat = decode(f)``, ``forward(x, lambda)``.

    Initialisation (Gemma Scope): decoder rows are random unit vectors, ``W_enc = W_dec^T``, biases zero.
    Subclasses add their latent-side parameters in :meth:`init_latent_parameters`.
    """

    arch: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = SAEConfig(arch=self.arch, **overrides) if cfg is None else replace(cfg, **overrides)
        if cfg.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch={self.arch!r}, got {cfg.arch!r}")
        self.cfg = cfg
        dtype = cfg.torch_dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            directions = F.normalize(torch.randn(cfg.d_sae, cfg.d_in, dtype=torch.float64), dim=1)
        self.W_enc = nn.Parameter(directions.T.contiguous().to(dtype))
        self.W_dec = nn.Parameter(directions.to(dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        self.register_buffer("input_scale", torch.ones((), dtype=dtype))
        self.init_latent_parameters()

    def init_latent_parameters(self) -> None:
        """Create the parameters on the latent side (``b_enc``, thresholds, gates)."""

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Latent activations ``[..., d_sae]`` of raw activations ``x`` ``[..., d_in]``."""

    @abstractmethod
    def forward(self, x: Tensor, sparsity_coefficient: float = 0.0) -> SAEOutput:
        """Encode, decode and score one batch ``x`` ``[B, d_in]`` of raw activations."""

    def decode(self, f: Tensor) -> Tensor:
        """Raw-unit reconstruction ``(f W_dec + b_dec) / s`` ``[..., d_in]`` of latents ``f`` ``[..., d_sae]``."""
        f2 = self._rows(f, self.cfg.d_sae, "feature activations")
        out = torch.addmm(self.b_dec, f2, self.W_dec) / self.input_scale
        return out.reshape(*f.shape[:-1], self.cfg.d_in)

    # -- helpers the architectures share ------------------------------------------------------------------
    def _rows(self, t: Tensor, width: int, what: str) -> Tensor:
        if t.ndim == 0 or t.shape[-1] != width:
            raise ValueError(
                f"{type(self).__name__}: {what} of shape {tuple(t.shape)} should end in {width}; "
                f"pass a [B, {width}] batch"
            )
        return t.reshape(-1, width).to(self.W_enc.dtype)

    def _scaled_input(self, x: Tensor) -> Tensor:
        return self._rows(x, self.cfg.d_in, "input") * self.input_scale

    def _centred_preactivations(self, xs: Tensor, bias: Tensor) -> Tensor:
        """``(xs - b_dec) W_enc + bias`` as ``xs W_enc + (bias - b_dec W_enc)``.

        Same value; but written this way b_dec's gradient is a vector-matrix product instead of a
        ``[B, d_sae] x [d_sae, d_in]`` matmul through the centred input, which saves one of the five big
        matmuls of a training step.
        """
        return torch.addmm(bias - self.b_dec @ self.W_enc, xs, self.W_enc)

    def _output(
        self, xs: Tensor, xs_hat: Tensor, f: Tensor, sparsity: Tensor | None, aux: Tensor | None
    ) -> SAEOutput:
        recon = F.mse_loss(xs_hat, xs, reduction="sum") / xs.shape[0]
        zero = recon.new_zeros(())
        sparsity = zero if sparsity is None else sparsity
        aux = zero if aux is None else aux
        l0 = (f.detach() != 0).sum(-1, dtype=recon.dtype).mean()
        return SAEOutput(xs_hat / self.input_scale, f, recon + sparsity + aux, recon, sparsity, aux, l0)

    # -- weight surgery -----------------------------------------------------------------------------------
    @torch.no_grad()
    def set_input_scale(self, scale: float) -> None:
        """Set ``s`` (see :func:`unit_mean_squared_norm_scale`); the trainer calls this before step one."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"input_scale must be a finite positive number, got {scale}")
        self.input_scale.fill_(scale)

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Rewrite the weights so ``input_scale`` is 1 and encode/decode are unchanged (module docstring)."""
        s = self.input_scale.clone()
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.input_scale.fill_(1.0)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Rescale every decoder row to unit L2 norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out of ``W_dec.grad`` the component parallel to each decoder row.

        With unit-norm rows this keeps a step tangent to the sphere, so the renormalisation that follows
        (:meth:`normalise_decoder`) only corrects second-order drift (Bricken et al. 2023; Gemma Scope).
        """
        if self.W_dec.grad is None:
            return
        unit = F.normalize(self.W_dec, dim=1)
        self.W_dec.grad.sub_((self.W_dec.grad * unit).sum(1, keepdim=True) * unit)

    def apply_constraints(self) -> None:
        """Called by the trainer after every optimiser step (JumpReLU keeps its thresholds non-negative)."""

    # -- saving -------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and then ``cfg.json`` (the :class:`SAEConfig` plus the weights' SHA-256
        under ``weights_sha256``) into ``directory``, each atomically: a crash leaves the old pair or weights
        that :meth:`load` refuses against the old digest, never a silent mix."""
        directory = Path(directory)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        data = save_safetensors(state)
        atomic_write_bytes(directory / "model.safetensors", data)
        write_json(
            directory / "cfg.json", {**config_to_dict(self.cfg), WEIGHTS_DIGEST_KEY: sha256_bytes(data)}
        )
        return directory

    @staticmethod
    def load(directory: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
        """Rebuild a saved SAE bit for bit (any architecture; it is named in ``cfg.json``).

        Raises:
            FileNotFoundError: ``directory`` holds no ``model.safetensors`` (the message names what it holds).
            CheckpointError: the weights' SHA-256 differs from the one ``cfg.json`` recorded.
            SAEFormatError: ``cfg.json`` or the weights are unreadable or do not fit together.
        """
        directory = Path(directory)
        weights, cfg_path = directory / "model.safetensors", directory / "cfg.json"
        if not weights.is_file():
            hint = ""
            if not directory.is_dir():
                hint = " (it is not a directory)" if directory.exists() else " (it does not exist)"
            elif (directory / "sae_weights.safetensors").is_file():
                hint = "; it looks like a SAELens directory: use credo.sae.load_saelens"
            elif (directory / "params.npz").is_file():
                hint = "; it holds a Gemma Scope params.npz: use credo.sae.load_gemma_scope_npz"
            raise FileNotFoundError(f"{weights} is missing, so {directory} is not a saved credo SAE{hint}")
        fix = f"restore {directory} or save the SAE again"
        raw = read_json(cfg_path, fix)
        if not isinstance(raw, dict):
            raise SAEFormatError(f"{cfg_path} holds a JSON {type(raw).__name__}, not an SAE config; {fix}")
        digest = raw.pop(WEIGHTS_DIGEST_KEY, None)
        try:
            cfg = config_from_dict(SAEConfig, raw)
        except (TypeError, ValueError) as err:
            raise SAEFormatError(f"{cfg_path} is not a credo SAE config ({err}); {fix}") from err
        data = weights.read_bytes()
        if digest is None:
            log.warning(
                "%s records no weights digest (saved by an older credo); save it again to add one", cfg_path
            )
        elif sha256_bytes(data) != digest:
            raise CheckpointError(
                f"{weights} is corrupted or was replaced: its SHA-256 is not the {str(digest)[:16]}... that "
                f"{cfg_path.name} recorded when it was saved; {fix}"
            )
        sae = build_sae(cfg)
        load_state(sae, parse_safetensors(data, weights, fix), str(weights))
        return sae.to(device)


def load_state(sae: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict`` with an error that lists the tensors found and the tensors expected."""
    expected = sae.state_dict()
    if set(state) != set(expected):
        raise SAEFormatError(
            f"{source} holds tensors {sorted(state)} but a {type(sae).__name__} needs {sorted(expected)}"
        )
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise SAEFormatError(
                f"{source}: {name} has shape {tuple(value.shape)}, expected {tuple(expected[name].shape)}"
            )
    sae.load_state_dict(state)
