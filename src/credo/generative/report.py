"""An HTML page of what a trained pose VAE does: inputs, their canonical poses and reconstructions, latent
traversals, the predicted rotation against the true angle, and the classifier's confusion matrix."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from credo.generative.pose_vae import PoseVAE
from credo.html import PAGE_CSS, png_data
from credo.io import atomic_write_bytes


def _shown(vae: PoseVAE, t: Tensor) -> np.ndarray:
    """Decoder outputs as images: sigmoid of Bernoulli logits, the mean otherwise; clipped to [0, 1]."""
    if vae.cfg.likelihood == "bernoulli":
        t = torch.sigmoid(t)
    return t.clamp(0, 1)[:, 0].numpy()


@torch.no_grad()
def reconstruction_figure(vae: PoseVAE, x: Tensor) -> Any:
    """Rows: images; columns: input, canonical pose, reconstruction (input pose), decoded canonical image."""
    import matplotlib.pyplot as plt

    enc = vae.encode(x)
    canonical_out = vae.decode_canonical(enc.mu)
    back = vae.decode(enc.mu, enc.pose)
    columns = [
        ("input", x[:, 0].numpy()),
        ("canonical pose", enc.canonical.clamp(0, 1)[:, 0].numpy()),
        ("reconstruction", _shown(vae, back)),
        ("decoded canonical", _shown(vae, canonical_out)),
    ]
    fig, axes = plt.subplots(len(x), 4, figsize=(6, 1.5 * len(x)), squeeze=False)
    for i in range(len(x)):
        for j, (title, images) in enumerate(columns):
            axes[i, j].imshow(images[i], cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def traversal_figure(vae: PoseVAE, x: Tensor, dims: int = 6, steps: int = 7) -> Any:
    """From the posterior mean of ``x[0]``, each of the ``dims`` latent dimensions with the largest mean KL over
    ``x`` moved through -3..3 prior standard deviations, decoded in the canonical pose."""
    import matplotlib.pyplot as plt

    enc = vae.encode(x)
    kl_per_dim = 0.5 * (enc.mu.square() + enc.logvar.exp() - 1 - enc.logvar).mean(0)
    order = kl_per_dim.argsort(descending=True)[:dims].tolist()
    values = torch.linspace(-3, 3, steps)
    fig, axes = plt.subplots(len(order), steps, figsize=(1.2 * steps, 1.25 * len(order)), squeeze=False)
    for r, j in enumerate(order):
        z = enc.mu[:1].repeat(steps, 1)
        z[:, j] = values
        images = _shown(vae, vae.decode_canonical(z))
        for c in range(steps):
            axes[r, c].imshow(images[c], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(f"z{j}\nKL {float(kl_per_dim[j]):.2f}", fontsize=8)
            if r == 0:
                axes[r, c].set_title(f"{float(values[c]):+.1f}", fontsize=8)
    fig.tight_layout()
    return fig


def rotation_figure(predicted: Tensor, true: Tensor, symmetry: int) -> Any:
    """Predicted rotation against the true angle, both modulo ``2 pi / symmetry``, in degrees."""
    import matplotlib.pyplot as plt

    period = 360.0 / symmetry
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(
        np.rad2deg(true.numpy()) % period,
        np.rad2deg(predicted.numpy()) % period,
        s=4,
        alpha=0.5,
        color="tab:blue",
    )
    ax.set_xlabel(f"true angle mod {period:.0f} (deg)")
    ax.set_ylabel(f"predicted rotation mod {period:.0f} (deg)")
    ax.set_title("rotation layer vs true angle", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_html(predicted: Tensor, labels: Tensor, classes: tuple[str, ...]) -> str:
    k = len(classes)
    counts = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(labels.tolist(), predicted.tolist(), strict=True):
        counts[t, p] += 1
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = "".join(
        f"<tr><th>{html.escape(classes[i])}</th>"
        + "".join(f'<td class="num">{int(counts[i, j])}</td>' for j in range(k))
        + "</tr>"
        for i in range(k)
    )
    return f"<table><tr><th>true \\ predicted</th>{head}</tr>{rows}</table>"


def write_pose_vae_report(
    path: str | Path,
    vae: PoseVAE,
    x: Tensor,
    labels: Tensor,
    classes: tuple[str, ...],
    metrics: dict[str, Any],
    rotated: tuple[Tensor, Tensor] | None = None,
    title: str = "pose VAE",
) -> Path:
    """Write the page to ``path`` from test images ``x`` with ``labels``; ``rotated``: images with their true
    rotation angles, for the rotation figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from credo.generative.evaluate import predicted_rotation

    vae.eval()
    with torch.no_grad():
        predicted = torch.cat([vae.classify(x[i : i + 256]).argmax(-1) for i in range(0, len(x), 256)])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{PAGE_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<h2>Figures</h2><table>",
        *(
            f"<tr><th>{html.escape(k)}</th><td class='num'>{v:.4g}</td></tr>"
            if isinstance(v, float)
            else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in metrics.items()
        ),
        "</table>",
    ]
    figures = [
        (
            "Inputs, canonical poses and reconstructions",
            "The ET stack removes translation, rotation and scale (second column); the decoder draws the canonical "
            "image (fourth) and the pose is put back (third).",
            reconstruction_figure(vae, x[:8]),
        ),
        (
            "Latent traversals",
            "One latent dimension at a time, from -3 to +3 prior standard deviations around a test image's "
            "posterior mean, decoded in the canonical pose; rows in order of mean KL (the dimensions in use).",
            traversal_figure(vae, x[:256]),
        ),
    ]
    if rotated is not None and vae.et is not None and vae.et.rotation is not None:
        figures.append(
            (
                "Rotation",
                "Each test image's removed rotation against its true angle; a learned pose agrees up to a constant "
                "offset, so the points should lie on a line of slope 1 that wraps around.",
                rotation_figure(predicted_rotation(vae, rotated[0]), rotated[1], vae.cfg.rotation_symmetry),
            )
        )
    for heading, note, fig in figures:
        parts.append(f"<h2>{heading}</h2><p class='note'>{note}</p>")
        parts.append(f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{png_data(fig)}">')
        plt.close(fig)
    parts.append("<h2>Confusion matrix (test)</h2>")
    parts.append(confusion_html(predicted, labels, classes))
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path
