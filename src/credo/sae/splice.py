"""Splicing an SAE into a language model: the next-token loss with a site's output replaced.

For held-out windows ``ids`` ``[n, T]`` the model runs three times per batch:

- clean, giving ``L_clean``;
- spliced: the activation ``a`` at the site replaced by the SAE's reconstruction ``decode(encode(a))``,
  giving ``L_spliced``;
- zero-ablated: ``a`` replaced by zeros, giving ``L_zero``.

Each loss is the mean next-token cross-entropy over every predicted position, ``(T - 1)`` per window
(position ``t`` predicts token ``t + 1``). From them::

    delta LM loss            = L_spliced - L_clean                      (Gemma Scope)
    fraction of loss recovered = (L_zero - L_spliced) / (L_zero - L_clean)  (1: perfect, 0: as bad as zero)
    KL                       = mean over positions of KL(p_clean || p_spliced)
                             = sum_v p_clean(v) (log p_clean(v) - log p_spliced(v))

**BOS.** The SAE never saw BOS activations (the harvester drops position 0 when a window starts with the
start token), so position 0 of a window whose first token is BOS keeps its original activation in both the
spliced and the zero-ablated runs; only the other positions are replaced. This is how Gemma Scope
evaluates; the loss is still taken over all predicted positions, including the prediction made at BOS.

**Where the replacement happens.** The site's :class:`~credo.sae.sites.HookPoint` says which module
output (or input, for ``attn.hook_z``) holds the activation: for a Llama decoder layer
(``hook_resid_post``) that is the layer output, a tensor in transformers 5 and a tuple ``(hidden, ...)`` in
4.x; for ``hook_attn_out`` the ``self_attn`` output ``[0]``; for ``hook_mlp_out`` the ``mlp`` output. A
forward hook returns the output with that entry replaced; both tuple and tensor outputs are handled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from credo.sae.sites import HookPoint, resolve_site

if TYPE_CHECKING:
    from credo.sae.reconstruction import ReconstructionAccumulator


class SplicedLMLoss(NamedTuple):
    """What :func:`spliced_lm_loss` returns (losses in nats per predicted token)."""

    clean_loss: float
    """``L_clean``: mean next-token cross-entropy of the unmodified model."""
    spliced_loss: float
    """``L_spliced``: the same with the site replaced by the SAE reconstruction (BOS kept)."""
    zero_ablation_loss: float
    """``L_zero``: the same with the site zeroed (BOS kept); NaN if it was not computed."""
    delta_lm_loss: float
    """``L_spliced - L_clean``."""
    fraction_of_loss_recovered: float
    """``(L_zero - L_spliced) / (L_zero - L_clean)``; NaN without the zero-ablation run or if
    ``L_zero == L_clean``."""
    kl_divergence: float
    """Mean over predicted positions of ``KL(p_clean || p_spliced)`` of the next-token distributions."""
    n_predictions: int
    """Number of predicted positions averaged over, ``n_windows * (T - 1)``."""


def splice_hook(point: HookPoint, replace: Callable[[Tensor], Tensor]) -> RemovableHandle:
    """Register a hook that swaps the activation ``a`` ``[B, T, d]`` at ``point`` for ``replace(a)``.

    Returns the handle; call ``.remove()`` when done. Tuple outputs (or inputs, for pre-hooks) keep their
    other entries.
    """
    if point.pre:

        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (replace(args[0]), *args[1:])

        return point.module.register_forward_pre_hook(pre_hook)

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, tuple | list):
            return type(output)((replace(output[0]), *output[1:]))
        return replace(output)

    return point.module.register_forward_hook(hook)


def bos_mask(ids: Tensor, bos_token_id: int | None) -> Tensor:
    """``[B, T]`` bool, True at position 0 of the windows whose first token is ``bos_token_id``."""
    keep = torch.zeros_like(ids, dtype=torch.bool)
    if bos_token_id is not None:
        keep[:, 0] = ids[:, 0] == bos_token_id
    return keep


def _logprobs(model: nn.Module, ids: Tensor) -> Tensor:
    """``[B, T - 1, V]`` float32 log-probabilities of the next token at every predicted position."""
    kwargs = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    out = model(input_ids=ids, **kwargs)
    logits = getattr(out, "logits", None)
    if logits is None:
        raise ValueError(
            f"{type(model).__name__} returns no logits; LM-loss evaluation needs a causal LM with its head "
            "(AutoModelForCausalLM), not a bare encoder"
        )
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


def _nll_sum(logp: Tensor, ids: Tensor) -> float:
    return -float(logp.gather(-1, ids[:, 1:, None]).double().sum())


def spliced_lm_loss(
    model: nn.Module,
    sae: nn.Module,
    site: str,
    token_windows: Tensor,
    batch_size: int = 4,
    exclude_bos: bool = True,
    bos_token_id: int | None = None,
    zero_ablation: bool = True,
    accumulator: ReconstructionAccumulator | None = None,
    progress: bool = False,
) -> SplicedLMLoss:
    """Clean, spliced and zero-ablated next-token loss of ``model`` on ``token_windows`` ``[n, T]``.

    ``sae`` needs ``encode(x [N, d]) -> f`` and ``decode(f) -> x_hat [N, d]`` (any
    :class:`~credo.sae.base.SparseAutoencoder`). With ``exclude_bos``, windows starting with
    ``bos_token_id`` (default ``model.config.bos_token_id``) keep their position-0 activation (module
    docstring). ``accumulator`` gets ``update(x, x_hat, f)`` with the replaced rows of every batch, so
    reconstruction metrics on the same held-out tokens come for free. The windows must be unpadded.
    Memory per batch: two ``[batch_size, T - 1, vocab]`` float32 log-probability tensors.
    """
    (result,) = spliced_lm_losses(
        model, [sae], site, token_windows, batch_size, exclude_bos, bos_token_id, zero_ablation,
        None if accumulator is None else [accumulator], progress,
    )  # fmt: skip
    return result


@torch.no_grad()
def spliced_lm_losses(
    model: nn.Module,
    saes: Sequence[nn.Module],
    site: str,
    token_windows: Tensor,
    batch_size: int = 4,
    exclude_bos: bool = True,
    bos_token_id: int | None = None,
    zero_ablation: bool = True,
    accumulators: Sequence[ReconstructionAccumulator] | None = None,
    progress: bool = False,
) -> list[SplicedLMLoss]:
    """:func:`spliced_lm_loss` for several SAEs at one site: the clean and zero-ablated runs are shared,
    so ``n`` SAEs cost ``n + 2`` forward passes per batch instead of ``3 n``. One result (and one optional
    accumulator) per SAE, in order."""
    if token_windows.ndim != 2 or token_windows.shape[1] < 2:
        raise ValueError(
            f"token_windows must be [n_windows, T >= 2] token ids, got {tuple(token_windows.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if accumulators is not None and len(accumulators) != len(saes):
        raise ValueError(f"{len(accumulators)} accumulators for {len(saes)} SAEs: pass one per SAE")
    point = resolve_site(model, site)
    if bos_token_id is None:
        bos_token_id = getattr(model.config, "bos_token_id", None)
    device = next(model.parameters()).device
    state: dict[str, Any] = {"mode": "clean", "keep": None, "sae": 0}

    def replace(a: Tensor) -> Tensor:
        if state["mode"] == "clean":
            return a
        if a.shape[:2] != state["keep"].shape:
            raise ValueError(f"{site}: activation of shape {tuple(a.shape)} is not [batch, tokens, d]")
        rows = ~state["keep"]
        if state["mode"] == "zero":
            return a.masked_fill(rows[..., None], 0.0)
        x = a[rows]
        sae = saes[state["sae"]]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        if accumulators is not None:
            accumulators[state["sae"]].update(x, x_hat, f)
        out = a.clone()
        out[rows] = x_hat.to(a.dtype)
        return out

    clean_sum = zero_sum = 0.0
    spliced_sums, kl_sums = [0.0] * len(saes), [0.0] * len(saes)
    n_pred = 0
    handle = splice_hook(point, replace)
    try:
        for lo in tqdm(
            range(0, len(token_windows), batch_size), disable=None if progress else True, desc="spliced loss"
        ):
            ids = token_windows[lo : lo + batch_size].to(device)
            state["keep"] = bos_mask(ids, bos_token_id if exclude_bos else None)
            state["mode"] = "clean"
            logp_clean = _logprobs(model, ids)
            clean_sum += _nll_sum(logp_clean, ids)
            state["mode"] = "spliced"
            for i in range(len(saes)):
                state["sae"] = i
                logp = _logprobs(model, ids)
                spliced_sums[i] += _nll_sum(logp, ids)
                # kl_div(input, target) = sum target * (log target - input) = KL(clean || spliced).
                kl_sums[i] += float(F.kl_div(logp, logp_clean, log_target=True, reduction="sum").double())
                del logp
            del logp_clean
            if zero_ablation:
                state["mode"] = "zero"
                zero_sum += _nll_sum(_logprobs(model, ids), ids)
            n_pred += ids.shape[0] * (ids.shape[1] - 1)
    finally:
        handle.remove()
    clean = clean_sum / n_pred
    zero = zero_sum / n_pred if zero_ablation else float("nan")
    results = []
    for spliced_sum, kl_sum in zip(spliced_sums, kl_sums, strict=True):
        spliced = spliced_sum / n_pred
        denominator = zero - clean
        recovered = (zero - spliced) / denominator if denominator != 0 else float("nan")
        results.append(
            SplicedLMLoss(clean, spliced, zero, spliced - clean, recovered, kl_sum / n_pred, n_pred)
        )
    return results
