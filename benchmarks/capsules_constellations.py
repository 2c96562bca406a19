"""Capsules as a probabilistic generative model: test-time optimisation, viewpoint, and where the assumptions fail.

The paper (Smith, Schut, Gal & van der Wilk) writes the capsule assumptions as a generative model bounded by a
variational objective, and claims: (1) test-time optimisation of the per-example variational parameters fixes
failures of amortised inference; (2) the assumed linear part-object pose relation should give robustness to
viewpoint; (3) the bound exposes where the capsule assumptions fail. Here, on SCAE's constellations (square,
triangle, pentagon, L-shape; each present with probability 0.75; rotations in +-45 degrees for training), with
``K = 4`` capsules of ``N = 5`` parts, 3 seeds (``credo.generative.capsule_train``, inference "vote"):

* Test-time optimisation: the ELBO, the importance-weighted bound (64 draws), the part-to-object ARI and the
  Hungarian-matched presence accuracy on 512 test constellations, from the encoder's q and after 10, 100 and
  1,000 refinement steps; the same from pose voting (a non-amortised start) as a reference.
* Viewpoint: test rotations in +-45, +-90 and +-180 degrees; the reconstruction log-likelihood per point
  (``log p(X | a, A)`` at q's presences and pose means) of the capsule model amortised, after 100 steps, and
  from voting, against an unstructured set autoencoder of the same encoder and code size
  (``credo.generative.set_autoencoder``) trained on the same data and noise schedule.
* Failures: (a) symmetric patterns: constellations of one pattern each; the gap between the importance-weighted
  bound and the ELBO (a Gaussian q covers one mode of a pose posterior with as many modes as the pattern has
  rotational symmetries: ``log 4`` for the square, ``log 5`` for the pentagon, 0 for the triangle and L);
  (b) overlapping objects: ARI by quartile of the smallest distance between two present objects' centres;
  (c) too few parts: a model with ``N = 3`` parts per capsule (fewer than the square's, pentagon's and L's).
* Images (observation model (b)): the image capsule model trained end to end from its CNN encoder on digit part
  scenes (the same patterns drawn with a digit template at every point, 40x40), 3 seeds; the ELBO, the
  importance-weighted bound and the presence accuracy on 128 test scenes, amortised and after 10 and 100
  refinement steps.
* Speed: 1,000 test-time steps on 256 constellations, batched, wall time on this machine's cores.

    python benchmarks/capsules_constellations.py                 # ~2 h on 2 cores; resumable per seed
    python benchmarks/capsules_constellations.py --budget test   # a smoke run of every piece
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch

from _common import run, summary, write_result
from credo.data.constellations import Constellations, generate_constellations
from credo.generative.capsule_evaluate import assignment_ari, test_time_curve
from credo.generative.capsule_inference import refine_posterior, vote_posterior
from credo.generative.capsule_train import (
    CapsuleTrainConfig,
    ConstellationData,
    ImageCapsuleTrainConfig,
    PartSceneData,
    load_capsules,
    load_image_capsules,
    train_capsules,
    train_image_capsules,
)
from credo.generative.set_autoencoder import SetAutoencoder, train_set_autoencoder
from credo.io import read_json, write_json

log = logging.getLogger("capsules_constellations")
BUDGETS = {
    "full": {"steps": 3000, "train": 20_000, "test": 512, "tto": (0, 10, 100, 1000), "view_steps": 100,
             "image_steps": 5000, "image_test": 128, "image_tto": (0, 10, 100)},
    "test": {"steps": 12, "train": 256, "test": 32, "tto": (0, 2, 5), "view_steps": 2,
             "image_steps": 6, "image_test": 8, "image_tto": (0, 2)},
}  # fmt: skip
VIEWS = (45.0, 90.0, 180.0)
SYMMETRY = {"square": 4, "triangle": 1, "pentagon": 5, "l-shape": 1}


def trained(args, seed: int, parts: int = 5):
    b = BUDGETS[args.budget]
    out = Path(args.out) / f"capsules-n{parts}-seed{seed}"
    cfg = CapsuleTrainConfig(
        out=str(out), parts_per_object=parts, data=ConstellationData(rotation_degrees=45.0), batch_size=64,
        steps=b["steps"], train_examples=b["train"], seed=seed,
    )  # fmt: skip
    if not (out / "model.pt").exists():
        log.info("training capsules (N=%d) seed %d into %s", parts, seed, out)
        train_capsules(cfg)
    return load_capsules(out)


def reconstruction(model, data: Constellations, q) -> float:
    """Mean over examples of ``log p(X | a, A) / M`` at presences ``rho > 1/2`` and the pose means."""
    presence = (torch.sigmoid(q.presence_logit) > 0.5).to(data.points.dtype)
    with torch.no_grad():
        ll = model.log_likelihood(data.points, data.mask, presence, q.pose_mean)
    return float((ll / data.mask.sum(1)).mean())


def closest_centres(data: Constellations) -> torch.Tensor:
    """``[B]`` the smallest distance between the centres (translations) of two present patterns; inf with one."""
    centres = data.poses[..., :2, 2]
    d = (centres[:, :, None] - centres[:, None, :]).norm(dim=-1)
    both = (
        data.present[:, :, None] & data.present[:, None, :] & ~torch.eye(len(data.shapes), dtype=torch.bool)
    )
    return torch.where(both, d, torch.full_like(d, math.inf)).flatten(1).min(1).values


def overlap_quartiles(model, data: Constellations, q) -> dict:
    """The assignment ARI of ``q`` per quartile of :func:`closest_centres` over examples with two or more
    patterns, with each quartile's mean closest distance."""
    obj, _ = model.assignments(data.points, q, data.mask)
    closest = closest_centres(data)
    several = torch.isfinite(closest)
    edges = torch.quantile(closest[several], torch.tensor([0.25, 0.5, 0.75]))
    bins = torch.bucketize(closest, edges)
    out = {}
    for i in range(4):
        pick = several & (bins == i)
        out[f"q{i + 1}"] = {
            "closest_centres_mean": float(closest[pick].mean()),
            "ari": assignment_ari(obj[pick], data.object_of[pick], data.mask[pick]),
        }
    return out


def evaluate_seed(args, seed: int) -> dict:
    done = Path(args.out) / f"eval-seed{seed}.json"
    if done.exists():
        return read_json(done, f"delete {done} to evaluate seed {seed} again")
    b = BUDGETS[args.budget]
    cfg, model, encoder = trained(args, seed)
    test = ConstellationData(rotation_degrees=45.0).generate(b["test"], seed=10_000)
    with torch.no_grad():
        amortised = encoder(test.points, test.mask)
    voted = vote_posterior(model, test.points, test.mask)
    refined_vote: dict = {}
    row: dict = {
        "tto_amortised": test_time_curve(model, test, amortised, b["tto"]),
        "tto_vote": test_time_curve(model, test, voted, b["tto"], snapshots=refined_vote),
    }

    # viewpoint, against a set autoencoder trained on the same data and noise schedule
    train = cfg.data.generate(cfg.train_examples, cfg.seed)
    torch.manual_seed(seed)
    ae = SetAutoencoder(cfg.num_objects, cfg.parts_per_object, cfg.hidden)
    train_set_autoencoder(ae, train.points, train.mask, cfg.noise_at, steps=cfg.steps, seed=seed)
    sigma = cfg.noise_at(cfg.steps)
    k = b["view_steps"]
    row["viewpoint"] = {}
    for degrees in VIEWS:
        view = ConstellationData(rotation_degrees=degrees).generate(b["test"], seed=10_001)
        with torch.no_grad():
            q0 = encoder(view.points, view.mask)
            ae_ll = float((ae.log_likelihood(view.points, view.mask, sigma) / view.mask.sum(1)).mean())
        qk, _ = refine_posterior(model, view.points, q0, k, view.mask)
        qv, _ = refine_posterior(
            model, view.points, vote_posterior(model, view.points, view.mask), k, view.mask
        )
        row["viewpoint"][str(int(degrees))] = {
            "capsules_amortised": reconstruction(model, view, q0),
            f"capsules_{k}_steps": reconstruction(model, view, qk),
            f"capsules_vote_{k}_steps": reconstruction(model, view, qv),
            "set_autoencoder": ae_ll,
            "ari_capsules_vote": assignment_ari(
                model.assignments(view.points, qv, view.mask)[0], view.object_of, view.mask
            ),  # fmt: skip
        }

    # (a) symmetric patterns: one pattern per constellation
    row["symmetry"] = {}
    for p, name in enumerate(test.shapes):
        single = generate_constellations(b["test"], shapes=(name,), presence=1.0,
                                         rotation=(-math.pi / 4, math.pi / 4), seed=10_002 + p)  # fmt: skip
        q, _ = refine_posterior(model, single.points, vote_posterior(model, single.points, single.mask), k,
                                single.mask)  # fmt: skip
        with torch.no_grad():
            elbo = model.elbo(single.points, q, single.mask, samples=64, relaxed=False)
            iw = model.importance_bound(single.points, q, single.mask, samples=64)
        row["symmetry"][name] = {"elbo": float(elbo.mean()), "importance_bound": float(iw.mean()),
                                 "gap": float((iw - elbo).mean())}  # fmt: skip

    # (b) overlap: ARI after voting and refinement, by quartile of the closest pair of present objects
    row["overlap"] = overlap_quartiles(model, test, refined_vote[k])  # view_steps is one of the tto counts
    write_json(done, row)
    log.info("seed %d evaluated", seed)
    return read_json(done, f"delete {done} to evaluate seed {seed} again")  # JSON keys: the same on a resume


def mismatch(args) -> dict:
    """(c): a model with 3 parts per capsule, seed 0, evaluated as the others after voting and refinement."""
    done = Path(args.out) / "eval-n3-seed0.json"
    if done.exists():
        return read_json(done, f"delete {done} to evaluate the 3-part model again")
    b = BUDGETS[args.budget]
    _, model, _ = trained(args, 0, parts=3)
    test = ConstellationData(rotation_degrees=45.0).generate(b["test"], seed=10_000)
    start = vote_posterior(model, test.points, test.mask)
    row = test_time_curve(model, test, start, (0, b["view_steps"]))[b["view_steps"]]
    write_json(done, row)
    return row


def images_seed(args, seed: int) -> dict:
    """The image model on digit part scenes: trained end to end, then the test-time curve from its encoder."""
    done = Path(args.out) / f"eval-images-seed{seed}.json"
    if done.exists():
        return read_json(done, f"delete {done} to evaluate the image model of seed {seed} again")
    b = BUDGETS[args.budget]
    out = Path(args.out) / f"image-capsules-seed{seed}"
    cfg = ImageCapsuleTrainConfig(out=str(out), steps=b["image_steps"], train_examples=10_000 if
                                  args.budget == "full" else 64, batch_size=64 if args.budget == "full" else 16,
                                  seed=seed)  # fmt: skip
    if not (out / "model.pt").exists():
        log.info("training the image capsule model seed %d into %s", seed, out)
        train_image_capsules(cfg)
    _, model, encoder = load_image_capsules(out)
    test = PartSceneData().generate(b["image_test"], seed=10_000)
    with torch.no_grad():
        q = encoder(test.images)
    row = test_time_curve(model, test, q, b["image_tto"], refine_samples=4)
    write_json(done, row)
    return read_json(done, f"delete {done} to evaluate the image model of seed {seed} again")


def speed(args) -> dict:
    """1,000 refinement steps on 256 constellations (the library's defaults), seed 0's model, wall time."""
    _, model, encoder = trained(args, 0)
    data = ConstellationData(rotation_degrees=45.0).generate(256, seed=10_003)
    with torch.no_grad():
        q = encoder(data.points, data.mask)
    refine_posterior(model, data.points, q, 5, data.mask)  # warm-up
    t0 = time.perf_counter()
    refine_posterior(model, data.points, q, 1000, data.mask)
    seconds = time.perf_counter() - t0
    return {"seconds_1000_steps_256_constellations": seconds, "threads": torch.get_num_threads(),
            "target_seconds": 60.0, "meets_target": seconds < 60.0}  # fmt: skip


def aggregate(rows: list[dict], path: tuple) -> dict:
    values = []
    for r in rows:
        for key in path:
            r = r[str(key)]
        values.append(r)
    return summary(values)


def images_summary(args) -> dict:
    b = BUDGETS[args.budget]
    rows = [images_seed(args, s) for s in range(args.seeds)]
    metrics = ("elbo", "importance_bound", "presence_accuracy")
    last = max(b["image_tto"])
    return {
        "test_time_optimisation": {
            str(s): {m: aggregate(rows, (s, m)) for m in metrics} for s in b["image_tto"]
        },
        f"elbo_gain_after_{last}_steps": summary([r[str(last)]["elbo"] - r["0"]["elbo"] for r in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/capsules-constellations")
    parser.add_argument("--budget", default="full", choices=sorted(BUDGETS))
    args = parser.parse_args()
    rows = [evaluate_seed(args, s) for s in range(args.seeds)]
    b = BUDGETS[args.budget]
    metrics = ("elbo", "importance_bound", "assignment_ari", "presence_accuracy")
    tto = {
        start: {str(s): {m: aggregate(rows, (f"tto_{start}", s, m)) for m in metrics} for s in b["tto"]}
        for start in ("amortised", "vote")
    }
    last = max(b["tto"])
    gains = [r["tto_amortised"][str(last)]["elbo"] - r["tto_amortised"]["0"]["elbo"] for r in rows]
    viewpoint = {
        deg: {key: aggregate(rows, ("viewpoint", deg, key)) for key in rows[0]["viewpoint"][deg]}
        for deg in rows[0]["viewpoint"]
    }
    symmetry = {
        name: {key: aggregate(rows, ("symmetry", name, key)) for key in ("elbo", "importance_bound", "gap")}
        | {"log_symmetry_order": math.log(SYMMETRY[name])}
        for name in rows[0]["symmetry"]
    }
    overlap = {q: {key: aggregate(rows, ("overlap", q, key)) for key in rows[0]["overlap"][q]}
               for q in rows[0]["overlap"]}  # fmt: skip
    result = {
        "task": f"constellations, {args.budget} budget, K=4 capsules of N=5 parts, training rotations +-45 deg",
        "seeds": args.seeds,
        "test_time_optimisation": tto,
        f"elbo_gain_after_{last}_steps_from_amortised": summary(gains),
        "viewpoint_reconstruction_per_point": viewpoint,
        "symmetric_patterns": symmetry,
        "overlap_ari_by_quartile": overlap,
        "too_few_parts_n3_seed0": mismatch(args),
        "images_digit_scenes": images_summary(args),
        "speed": speed(args),
    }
    write_result("capsules_constellations" if args.budget == "full" else f"capsules_constellations_{args.budget}",
                 result)  # fmt: skip


if __name__ == "__main__":
    run(main)
