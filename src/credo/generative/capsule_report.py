"""An HTML page of what a trained capsule model does on constellations: the learned part templates, test point
sets coloured by the object capsule that explains each point (truth, amortised, after test-time steps), the
predicted object rotations against the true ones, and the bounds and scores per inference scheme; and its
counterpart for the image model on part scenes (learned template images, each present capsule's rendering)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from credo.data.constellations import TEMPLATES, Constellations
from credo.data.part_scenes import PartScenes
from credo.generative.capsule_evaluate import presence_accuracy
from credo.generative.capsule_images import ImageCapsuleModel
from credo.generative.capsules import CapsuleModel, CapsulePosterior
from credo.html import PAGE_CSS, png_data
from credo.io import atomic_write_bytes

COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
)


def templates_figure(model: CapsuleModel, shapes: tuple[str, ...]) -> Any:
    """Top: each capsule's learned parts; bottom: the generator's patterns (own frames, up to a similarity)."""
    import matplotlib.pyplot as plt

    k = model.cfg.num_objects
    cols = max(k, len(shapes))
    fig, axes = plt.subplots(2, cols, figsize=(1.8 * cols, 3.8), squeeze=False)
    parts = model.parts.detach().numpy()
    for c in range(cols):
        for row in range(2):
            axes[row, c].set_aspect("equal")
            axes[row, c].set_xticks([])
            axes[row, c].set_yticks([])
        if c < k:
            axes[0, c].scatter(parts[c, :, 0], parts[c, :, 1], color=COLOURS[c % len(COLOURS)], s=30)
            axes[0, c].set_title(f"capsule {c}", fontsize=9)
        else:
            axes[0, c].axis("off")
        if c < len(shapes):
            t = TEMPLATES[shapes[c]].numpy()
            axes[1, c].scatter(t[:, 0], t[:, 1], color="0.3", s=30)
            axes[1, c].set_title(shapes[c], fontsize=9)
        else:
            axes[1, c].axis("off")
    return fig


def assignments_figure(
    model: CapsuleModel, data: Constellations, rows: list[tuple[str, CapsulePosterior | None]]
):
    """Columns: test examples; rows: the truth (colour = pattern) and each posterior (colour = the capsule whose
    part explains the point best; x = clutter), with the parts of the capsules judged present as open circles."""
    import matplotlib.pyplot as plt

    n = min(8, len(data))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.7 * n, 1.8 * len(rows)), squeeze=False)
    for r, (name, q) in enumerate(rows):
        if q is not None:
            obj, _ = model.assignments(data.points[:n], q.select(slice(n)), data.mask[:n])
            present = torch.sigmoid(q.presence_logit[:n]) > 0.5
            placed = model.part_positions(q.pose_mean[:n]).detach()
        for i in range(n):
            ax = axes[r, i]
            m = data.mask[i]
            x = data.points[i][m].numpy()
            group = (data.object_of[i] if q is None else obj[i])[m].numpy()
            for g in np.unique(group):
                sel = group == g
                if g < 0:
                    ax.scatter(x[sel, 0], x[sel, 1], marker="x", color="0.5", s=16)
                else:
                    ax.scatter(x[sel, 0], x[sel, 1], color=COLOURS[g % len(COLOURS)], s=16)
            if q is not None:
                for k in torch.nonzero(present[i]).flatten().tolist():
                    p = placed[i, k].numpy()
                    ax.scatter(
                        p[:, 0], p[:, 1], facecolors="none", edgecolors=COLOURS[k % len(COLOURS)], s=60
                    )
            ax.set_xlim(-2.6, 2.6)
            ax.set_ylim(-2.6, 2.6)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
    return fig


def rotation_figure(data: Constellations, q: CapsulePosterior, matched: list[int]) -> Any:
    """Per pattern, the matched capsule's rotation ``atan2(beta, alpha)`` against the pattern's true rotation, on
    the examples where the pattern is present and the capsule judged present. A learned template has its own
    frame, so agreement is a line of slope 1 at some offset (wrapping around; a symmetric pattern repeats it)."""
    import matplotlib.pyplot as plt

    shapes = data.shapes
    fig, axes = plt.subplots(1, len(shapes), figsize=(2.6 * len(shapes), 2.6), squeeze=False)
    true_angle = torch.atan2(data.poses[..., 1, 0], data.poses[..., 0, 0])
    predicted = torch.atan2(q.pose_mean[..., 1], q.pose_mean[..., 0])
    present = torch.sigmoid(q.presence_logit) > 0.5
    for p, name in enumerate(shapes):
        ax = axes[0, p]
        k = matched[p]
        sel = data.present[:, p] & present[:, k]
        ax.scatter(
            np.degrees(true_angle[sel, p].numpy()),
            np.degrees(predicted[sel, k].detach().numpy()),
            s=5,
            alpha=0.6,
        )
        ax.set_xlim(-185, 185)
        ax.set_ylim(-185, 185)
        ax.set_title(f"{name} -> capsule {k}", fontsize=9)
        ax.set_xlabel("true rotation (deg)", fontsize=8)
        if p == 0:
            ax.set_ylabel("capsule rotation (deg)", fontsize=8)
    fig.tight_layout()
    return fig


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict) and "elbo" in value:
            rows.append(
                f"<tr><th>{html.escape(key.replace('_', ' '))}</th>"
                + "".join(
                    f'<td class="num">{value[m]:.4g}</td>' if m in value else "<td>-</td>"
                    for m in ("elbo", "importance_bound", "assignment_ari", "presence_accuracy")
                )
                + "</tr>"
            )
    head = "<tr><th>q</th><th>ELBO</th><th>importance bound</th><th>assignment ARI</th><th>presence accuracy</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def image_templates_figure(model: ImageCapsuleModel, scenes: PartScenes) -> Any:
    """Top rows: each capsule's learned part templates (its row); bottom rows: the generator's, per pattern."""
    import matplotlib.pyplot as plt

    learned = model.templates.detach()
    truth = scenes.templates
    rows, cols = len(learned) + len(truth), max(learned.shape[1], truth.shape[1])
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows), squeeze=False)
    for r in range(rows):
        own = learned[r] if r < len(learned) else truth[r - len(learned)]
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(own):
                ax.imshow(own[c].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        label = f"capsule {r}" if r < len(learned) else scenes.shapes[r - len(learned)]
        axes[r, 0].set_ylabel(label, fontsize=7)
    return fig


def image_explained_figure(
    model: ImageCapsuleModel, scenes: PartScenes, rows: list[tuple[str, CapsulePosterior]]
) -> Any:
    """Columns: test scenes; first row the image, then per posterior each present capsule's rendering in its
    own colour (where colours mix, capsules overlap)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    n = min(8, len(scenes))
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.7 * n, 1.8 * (1 + len(rows))), squeeze=False)
    palette = torch.tensor([to_rgb(COLOURS[k % len(COLOURS)]) for k in range(model.cfg.num_objects)])
    for i in range(n):
        axes[0, i].imshow(scenes.images[i].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("image", fontsize=8)
    for r, (name, q) in enumerate(rows, start=1):
        with torch.no_grad():
            objects = model.render_objects(q.pose_mean[:n])  # [n, K, H, W]
        present = (torch.sigmoid(q.presence_logit[:n]) > 0.5).to(objects.dtype)
        rgb = torch.einsum("bkhw,kc->bhwc", objects * present[..., None, None], palette).clamp(0, 1)
        for i in range(n):
            axes[r, i].imshow(rgb[i].numpy())
        axes[r, 0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def write_image_capsule_report(
    path: str | Path,
    model: ImageCapsuleModel,
    scenes: PartScenes,
    posteriors: dict[str, CapsulePosterior],
    posed: str,
    metrics: dict[str, Any],
    title: str = "capsule model on part scenes",
) -> Path:
    """The image model's page: learned templates against the generator's, test scenes explained by each
    posterior (present capsules coloured), predicted against true rotations, and the bounds and scores."""
    import matplotlib

    matplotlib.use("Agg")

    q = posteriors[posed]
    matched = presence_accuracy(torch.sigmoid(q.presence_logit), scenes.present)["capsule_of_pattern"]
    intro = (
        f"{model.cfg.num_objects} object capsules of {model.cfg.parts_per_object} part templates; pixel noise "
        f"s = {float(model.pixel_noise):.3g}; {len(scenes)} test scenes. Bounds are nats per image (higher is "
        "better; a Gaussian pixel density, so they can be positive)."
    )
    figures = [
        ("Learned part templates", "One row per capsule, then the generator's templates per pattern.",
         image_templates_figure(model, scenes)),
        ("Test scenes, explained", f"Rows: the image, then {', '.join(posteriors)}: each capsule judged present "
         "drawn in its colour.", image_explained_figure(model, scenes, list(posteriors.items()))),
        ("Object rotations", f"Each pattern's true rotation against its matched capsule's ({posed}).",
         rotation_figure(scenes, q, matched)),
    ]  # fmt: skip
    return _write_page(path, title, intro, metrics, figures)


def _write_page(path, title: str, intro: str, metrics: dict[str, Any], figures: list) -> Path:
    import matplotlib.pyplot as plt

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{PAGE_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>{html.escape(intro)}</p>",
        "<h2>Bounds and scores</h2>",
        _metrics_table(metrics),
    ]
    for heading, note, fig in figures:
        parts.append(f"<h2>{heading}</h2><p class='note'>{html.escape(note)}</p>")
        parts.append(f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{png_data(fig)}">')
        plt.close(fig)
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


def write_capsule_report(
    path: str | Path,
    model: CapsuleModel,
    data: Constellations,
    posteriors: dict[str, CapsulePosterior],
    posed: str,
    metrics: dict[str, Any],
    title: str = "capsule model on constellations",
) -> Path:
    """Write the page to ``path`` for test constellations ``data``: ``posteriors`` are q's over all of ``data``
    by label (one row of the assignment figure each), ``posed`` the label whose poses the rotation figure shows,
    ``metrics`` as the CLI writes them."""
    import matplotlib

    matplotlib.use("Agg")

    q = posteriors[posed]
    matched = presence_accuracy(torch.sigmoid(q.presence_logit), data.present)["capsule_of_pattern"]
    sigma = float(model.noise)
    largest = math.degrees(float(torch.atan2(data.poses[..., 1, 0], data.poses[..., 0, 0]).abs().max()))
    intro = (
        f"{model.cfg.num_objects} object capsules of {model.cfg.parts_per_object} parts; point noise "
        f"sigma = {sigma:.3g}; {len(data)} test constellations. Bounds are nats per example (higher is better); "
        "ARI compares each point's capsule with the pattern that drew it."
    )
    figures = [
        ("Learned part templates", "Each capsule's parts in its own frame, above the generator's patterns.",
         templates_figure(model, data.shapes)),
        ("Test constellations, explained", f"Rows: the truth, then {', '.join(posteriors)}. Colour: the capsule "
         "that explains the point; x: clutter; open circles: where the present capsules put their parts.",
         assignments_figure(model, data, [("truth", None), *posteriors.items()])),
        ("Object rotations", f"Each pattern's true rotation against its matched capsule's ({posed}; Hungarian "
         f"matching on presences). Rotations of the test set reach about {largest:.0f} deg.",
         rotation_figure(data, q, matched)),
    ]  # fmt: skip
    return _write_page(path, title, intro, metrics, figures)
