"""``credo generative train pose-vae``: a semi-supervised pose VAE on procedural galaxies or rotated
Fashion-MNIST; ``credo generative train capsules``: the capsule generative model on constellations. Both
resumable, with a report."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal


@dataclass
class GenerativeTrainCommand:
    """Train a pose VAE classifier with few labels; writes <out>/model (a saved method), <out>/metrics.json and
    <out>/report.html. Per-epoch checkpoints go to <out>/checkpoints: rerun the same command to resume."""

    data: Literal["galaxies", "rotated-fashion-mnist"] = "galaxies"
    """Procedural galaxies (a stand-in for Galaxy Zoo 2, with votes) or Fashion-MNIST at random rotations."""
    labels: str = "100"
    """How many training images keep their labels (a count, or all)."""
    regime: Literal["semi-supervised", "pretrain-finetune", "supervised"] = "semi-supervised"
    """How labels and unlabelled images are used."""
    equivariant: bool = True
    """Remove the pose with Equivariant Transformer layers before encoding."""
    rotation_symmetry: int = 0
    """Read the rotation modulo 2 pi / m; 0: the data's default (2 for galaxies, 1 for Fashion-MNIST)."""
    classifier_weight: float = 1.0
    """The weight of the per-vote classification loss against the per-pixel negative ELBO."""
    budget: Literal["test", "demo", "full"] = "full"
    """Data and epochs: test (256 images, 1 epoch), demo (4,000, 3 epochs), full (10,000, 5 epochs)."""
    epochs: int = 0
    """Epochs; 0: the budget's."""
    seed: int = 0
    out: str = ""
    """Output directory (required)."""


def _task(cmd: GenerativeTrainCommand):
    from credo.bench.generative_tasks import galaxy_task, rotated_fashion_mnist_task

    if cmd.labels != "all" and not (cmd.labels.isdigit() and int(cmd.labels) >= 1):
        raise ValueError(f"--labels takes a positive count or 'all', got {cmd.labels!r}")
    return (galaxy_task if cmd.data == "galaxies" else rotated_fashion_mnist_task)(cmd.labels)


def posed_test_images(data: str, n: int):
    """``n`` test images with their true rotation angles: the first ``n`` of the procedural galaxies' test
    stream (seed 2), or of rotated Fashion-MNIST's test split."""
    if data == "galaxies":
        from credo.bench.generative_tasks import GALAXY_SIZE
        from credo.data.galaxies import generate_galaxies

        g = generate_galaxies(n, GALAXY_SIZE, seed=2)
        return g.x, g.position_angle
    from credo.bench.generative_tasks import FMNIST_SIZE
    from credo.data.rotated import load_rotated_fashion_mnist

    ds, angle = load_rotated_fashion_mnist("test", FMNIST_SIZE, seed=0)
    return ds.x[:n], angle[:n]


def run_generative_train(cmd: GenerativeTrainCommand) -> Path:
    from credo.bench.methods import build_method
    from credo.generative.evaluate import held_out_bound, predicted_rotation, rotation_error
    from credo.generative.report import write_pose_vae_report
    from credo.io import write_json

    if not cmd.out:
        raise ValueError("name an output directory: credo generative train pose-vae --out DIR")
    if cmd.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {cmd.epochs}")
    out = Path(cmd.out)
    task = _task(cmd)
    data = task.load(cmd.budget)
    if cmd.rotation_symmetry < 0 or cmd.classifier_weight < 0:
        raise ValueError("--rotation-symmetry and --classifier-weight must be >= 0")
    overrides: dict = {
        "regime": cmd.regime, "equivariant": cmd.equivariant, "classifier_weight": cmd.classifier_weight,
    }  # fmt: skip
    if cmd.rotation_symmetry:
        overrides["rotation_symmetry"] = cmd.rotation_symmetry
    if cmd.epochs:
        overrides["fit"] = {"epochs": cmd.epochs}
    method = build_method(
        "pose-vae", task, cmd.budget, cmd.seed, checkpoint_dir=out / "checkpoints", overrides=overrides,
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    budget = task.budget(cmd.budget)
    method.fit(data.train.loader(budget.batch_size, shuffle=True, seed=cmd.seed), data.val.loader(512))
    method.save(out / "model")
    test = data.test
    pred, y = method.predict_loader(test.loader(512))
    vae = method.vae
    metrics: dict = {
        "task": task.name,
        "budget": cmd.budget,
        "labelled_images": int((method.prepare_targets(data.train.y, "train").sum(-1) > 0).sum()),
        "training_images": len(data.train),
        "test_accuracy": float((pred.predicted_class == y).double().mean()),
        **{f"test_{k}": v for k, v in held_out_bound(vae, test.x).items()},
    }
    posed = posed_test_images(cmd.data, 2000)
    rot_x, angles = posed if vae.et is not None and vae.et.rotation is not None else (None, None)
    if angles is not None:
        symmetry = 2 if cmd.data == "galaxies" else 1  # galaxies are two-fold symmetric: compare modulo pi
        error = rotation_error(predicted_rotation(vae, rot_x), angles, symmetry)
        metrics.update({f"rotation_{k}": v for k, v in error.items()})
    write_json(out / "metrics.json", {"command": asdict(cmd), **metrics})
    report = write_pose_vae_report(
        out / "report.html", vae, test.x[:1024], y[:1024], test.classes, metrics, rotated=posed,
        title=f"pose VAE on {task.name} ({cmd.regime})",
    )  # fmt: skip
    sys.stdout.write(f"{out / 'metrics.json'}\nreport: {report}\n")
    return out


@dataclass
class CapsuleTrainCommand:
    """Train the capsule generative model and its encoder on constellations (point sets) or part scenes (images);
    writes <out>/model.pt, <out>/metrics.json (bounds, assignment ARI for points, presence accuracy: amortised,
    and after test-time steps) and <out>/report.html. Checkpoints every 500 steps: rerun the same command to
    resume."""

    data: Literal["constellations", "digit-scenes", "fashion-scenes"] = "constellations"
    """constellations: point sets of square, triangle, pentagon and L-shape patterns under random similarity
    transforms; digit-scenes / fashion-scenes: the same patterns drawn as 40x40 images with a part template
    (cut from digits or Fashion-MNIST) at every point; the image model learns end to end from its CNN encoder."""
    inference: Literal["vote", "amortised"] = "vote"
    """(constellations) How the model learns: from pose voting refined by test-time steps, or from the encoder."""
    encoder: Literal["deep-sets", "attention"] = "deep-sets"
    """(constellations) The amortised set encoder."""
    objects: int = 4
    """Object capsules K."""
    parts: int = 5
    """Parts per object capsule N."""
    rotation_degrees: float = 45.0
    """Training rotations uniform in [-this, this] degrees."""
    test_rotation_degrees: float = 45.0
    """Test rotations uniform in [-this, this] degrees."""
    steps: int = 3000
    """Training steps (batches of 64)."""
    test_steps: int = 100
    """Test-time refinement steps per test example."""
    test_examples: int = 0
    """Test examples (0: 512 constellations or 128 scenes)."""
    seed: int = 0
    out: str = ""
    """Output directory (required)."""


def run_capsule_train(cmd: CapsuleTrainCommand) -> Path:
    import torch

    from credo.data.constellations import SHAPES
    from credo.generative.capsule_evaluate import test_time_curve
    from credo.generative.capsule_inference import vote_posterior
    from credo.generative.capsule_report import write_capsule_report
    from credo.generative.capsule_train import (
        CapsuleTrainConfig,
        ConstellationData,
        load_capsules,
        train_capsules,
    )
    from credo.io import write_json

    if not cmd.out:
        raise ValueError("name an output directory: credo generative train capsules --out DIR")
    if cmd.test_steps < 0 or cmd.test_examples < 0:
        raise ValueError(
            f"need --test-steps >= 0 and --test-examples >= 0, got {cmd.test_steps}, {cmd.test_examples}"
        )
    patterns = len(SHAPES)
    if cmd.objects < patterns:
        raise ValueError(
            f"--objects must be at least the {patterns} patterns of the constellations (got {cmd.objects}), so "
            "each pattern can be matched to a capsule"
        )
    out = Path(cmd.out)
    if cmd.data != "constellations":
        return _run_image_capsules(cmd, out)
    cfg = CapsuleTrainConfig(
        out=str(out), num_objects=cmd.objects, parts_per_object=cmd.parts, encoder=cmd.encoder,
        inference=cmd.inference, data=ConstellationData(rotation_degrees=cmd.rotation_degrees), batch_size=64,
        steps=cmd.steps, seed=cmd.seed,
    )  # fmt: skip
    if not (out / "model.pt").exists():
        train_capsules(cfg, progress=sys.stderr.isatty())
    saved, model, encoder = load_capsules(out)
    _refuse_other_settings(out, saved, cfg)
    test = ConstellationData(rotation_degrees=cmd.test_rotation_degrees).generate(
        cmd.test_examples or 512, seed=10_000
    )
    with torch.no_grad():
        amortised = encoder(test.points, test.mask)
    voted = vote_posterior(model, test.points, test.mask)
    steps = tuple(sorted({0, min(10, cmd.test_steps), cmd.test_steps}))
    refined: dict[str, dict] = {"amortised": {}, "vote": {}}
    curves = {
        "amortised": test_time_curve(model, test, amortised, steps, snapshots=refined["amortised"]),
        "vote": test_time_curve(model, test, voted, steps, snapshots=refined["vote"]),
    }
    metrics = {
        "command": asdict(cmd),
        "test_examples": len(test),
        "noise": float(model.noise),
        **{f"{start}_after_{s}_steps": curves[start][s] for start in curves for s in steps},
    }
    write_json(out / "metrics.json", metrics)
    k = cmd.test_steps
    shown = {"amortised": amortised, f"+{k} steps": refined["amortised"][k], f"vote +{k}": refined["vote"][k]}
    report = write_capsule_report(out / "report.html", model, test, shown, f"+{k} steps", metrics)
    sys.stdout.write(f"{out / 'metrics.json'}\nreport: {report}\n")
    return out


def _refuse_other_settings(out: Path, saved, cfg) -> None:
    was, now = asdict(saved), asdict(cfg)
    if was != now:
        changed = [f"{k} {v} (now {now[k]})" for k, v in was.items() if now[k] != v]
        raise ValueError(
            f"{out / 'model.pt'} was trained with other settings: {', '.join(changed)}; choose another --out, "
            "or delete that directory to train again"
        )


def _run_image_capsules(cmd: CapsuleTrainCommand, out: Path) -> Path:
    import torch

    from credo.generative.capsule_evaluate import test_time_curve
    from credo.generative.capsule_report import write_image_capsule_report
    from credo.generative.capsule_train import (
        ImageCapsuleTrainConfig,
        PartSceneData,
        load_image_capsules,
        train_image_capsules,
    )
    from credo.io import write_json

    source = "digits" if cmd.data == "digit-scenes" else "fashion-mnist"
    cfg = ImageCapsuleTrainConfig(
        out=str(out), num_objects=cmd.objects, parts_per_object=cmd.parts,
        data=PartSceneData(source=source, rotation_degrees=cmd.rotation_degrees), steps=cmd.steps, seed=cmd.seed,
    )  # fmt: skip
    if not (out / "model.pt").exists():
        train_image_capsules(cfg, progress=sys.stderr.isatty())
    saved, model, encoder = load_image_capsules(out)
    _refuse_other_settings(out, saved, cfg)
    test = PartSceneData(source=source, rotation_degrees=cmd.test_rotation_degrees).generate(
        cmd.test_examples or 128, seed=10_000
    )
    with torch.no_grad():
        amortised = encoder(test.images)
    steps = tuple(sorted({0, min(10, cmd.test_steps), cmd.test_steps}))
    refined: dict = {}
    curve = test_time_curve(model, test, amortised, steps, snapshots=refined)
    metrics = {
        "command": asdict(cmd),
        "test_examples": len(test),
        "pixel_noise": float(model.pixel_noise),
        **{f"amortised_after_{s}_steps": curve[s] for s in steps},
    }
    write_json(out / "metrics.json", metrics)
    k = cmd.test_steps
    shown = {"amortised": amortised, f"+{k} steps": refined[k]}
    report = write_image_capsule_report(out / "report.html", model, test, shown, f"+{k} steps", metrics)
    sys.stdout.write(f"{out / 'metrics.json'}\nreport: {report}\n")
    return out
