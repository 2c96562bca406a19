"""Pieces shared by methods that put their own output layer on a backbone's features (DUE, SNGP).

Such a method builds the backbone of its config with :func:`credo.nn.build_backbone` and drops the linear head,
so ``extractor(x)`` returns the ``[B, feature_dim]`` representation every backbone exposes as ``features(x)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from credo.errors import TrainingDivergedError
from credo.nn import BackboneConfig, build_backbone
from credo.uncertainty.base import UncertaintyMethod


def build_feature_extractor(cfg: BackboneConfig) -> tuple[nn.Module, int]:
    """The backbone ``cfg`` describes without its head, and the width of its features.

    The head is replaced by ``nn.Identity``, so ``extractor(x) == backbone.features(x)`` and the parameters
    keep the names they have in the full backbone.
    """
    backbone = build_backbone(cfg)
    backbone.head = nn.Identity()
    return backbone, int(backbone.feature_dim)


def training_inputs(loader, count: int, seed: int) -> Tensor:
    """Up to ``count`` training inputs drawn at random (seeded) from ``loader.dataset``.

    A loader without a ``dataset`` (a plain iterable of batches) gives its first ``count`` examples instead.
    """
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(dataset), generator=generator)[:count]
        if hasattr(dataset, "x"):  # credo's ArrayDataset: one index_select instead of a Python loop
            return dataset.x[index]
        return torch.stack([dataset[int(i)][0] for i in index])
    parts, seen = [], 0
    for x, _ in loader:
        parts.append(x[: count - seen])
        seen += len(parts[-1])
        if seen >= count:
            break
    return torch.cat(parts)


def dataset_size(loader) -> int:
    """Number of training examples behind ``loader`` (its ``dataset``'s length, else counted batch by batch)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        return len(dataset)
    return sum(len(y) for _, y in loader)


def check_features(method: UncertaintyMethod, features: Tensor, step: int, steps_per_epoch: int) -> None:
    """Stop training with a message naming the step and the likely cause if ``features`` are not finite.

    The fit loop has already rejected NaN inputs, so non-finite features mean the extractor itself diverged.
    The loop writes its checkpoint only at the end of an epoch, so raising here leaves the last good one.
    """
    if bool(features.isfinite().all()):
        return
    cfg = method.config
    epoch, batch = divmod(step, max(1, steps_per_epoch))
    if cfg.backbone.spectral_coeff is None:
        cause = (
            "the extractor has no spectral normalisation (backbone.spectral_coeff=None), so nothing bounds"
        )
    else:
        cause = f"the spectral normalisation coefficient ({cfg.backbone.spectral_coeff:g}) lets"
    raise TrainingDivergedError(
        f"{method.name}: training step {step} (epoch {epoch + 1}, batch {batch} of this fit call) turned finite "
        f"inputs into NaN or infinite features: the feature extractor diverged. Likely causes: a learning rate "
        f"too high for this network (fit.lr={cfg.fit.lr:g}), or {cause} the growth of its features. Lower "
        f"fit.lr (or the coefficient); with fit.checkpoint_dir set, the last completed epoch's checkpoint is "
        f"kept and a rerun resumes from it."
    )
