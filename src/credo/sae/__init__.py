"""Sparse autoencoders: ReLU, Gated, JumpReLU (Gemma Scope), TopK and BatchTopK, with SAELens and Gemma
Scope formats. ``credo.sae.JumpReLUSAE(d_in=576, d_sae=4608)`` builds one; ``SparseAutoencoder.load`` reads
one back."""

from credo.sae.base import (
    ARCHITECTURES,
    SAE_ARCHITECTURES,
    SAEConfig,
    SAEFormatError,
    SAEOutput,
    SparseAutoencoder,
    build_sae,
    register_sae,
    unit_mean_squared_norm_scale,
)
from credo.sae.buffer import ShuffleBuffer
from credo.sae.corpus import load_corpus, split_windows, tokenize_windows
from credo.sae.evaluate import SAEEvalConfig, evaluate_sae, run_eval
from credo.sae.gated import GatedSAE
from credo.sae.gemma_scope import load_gemma_scope_npz, save_gemma_scope_npz
from credo.sae.harvest import HarvestConfig, harvest_to_store, run_harvest, stream_from_model
from credo.sae.jumprelu import JumpReLUFunction, JumpReLUSAE, StepFunction
from credo.sae.jumprelu_sparse import SparseJumpReLUStep
from credo.sae.models import load_causal_lm
from credo.sae.reconstruction import ReconstructionAccumulator, plot_feature_density
from credo.sae.relu import ReLUSAE
from credo.sae.saelens import load_saelens, save_saelens
from credo.sae.schedules import TrainingSchedule
from credo.sae.scope import ScopeConfig, ScopeTrainer, run_scope
from credo.sae.scope_release import load_scope, write_release
from credo.sae.scope_stream import ScopeStream
from credo.sae.sites import list_sites, site_width
from credo.sae.splice import SplicedLMLoss, spliced_lm_loss, spliced_lm_losses
from credo.sae.store import ActivationStore, CorruptShardError
from credo.sae.target_l0 import L0Controller
from credo.sae.topk import BatchTopKSAE, TopKSAE
from credo.sae.train import SAETrainer, train_saes
from credo.sae.train_config import SAESpec, SAETrainConfig
from credo.sae.writer import ActivationWriter

# ``harvest`` itself is not re-exported: it would shadow the module credo.sae.harvest.

__all__ = [
    "L0Controller",
    "ScopeConfig",
    "ScopeStream",
    "ScopeTrainer",
    "load_scope",
    "run_scope",
    "write_release",
    "train_saes",
    "SAETrainer",
    "TrainingSchedule",
    "SAETrainConfig",
    "SAESpec",
    "spliced_lm_loss",
    "spliced_lm_losses",
    "SplicedLMLoss",
    "run_eval",
    "plot_feature_density",
    "evaluate_sae",
    "SAEEvalConfig",
    "ReconstructionAccumulator",
    "ARCHITECTURES",
    "SAE_ARCHITECTURES",
    "ActivationStore",
    "ActivationWriter",
    "BatchTopKSAE",
    "CorruptShardError",
    "GatedSAE",
    "HarvestConfig",
    "JumpReLUFunction",
    "JumpReLUSAE",
    "SparseJumpReLUStep",
    "ReLUSAE",
    "SAEConfig",
    "SAEFormatError",
    "SAEOutput",
    "ShuffleBuffer",
    "SparseAutoencoder",
    "StepFunction",
    "TopKSAE",
    "build_sae",
    "harvest_to_store",
    "list_sites",
    "load_causal_lm",
    "load_corpus",
    "load_gemma_scope_npz",
    "load_saelens",
    "register_sae",
    "run_harvest",
    "save_gemma_scope_npz",
    "save_saelens",
    "site_width",
    "split_windows",
    "stream_from_model",
    "tokenize_windows",
    "unit_mean_squared_norm_scale",
]
