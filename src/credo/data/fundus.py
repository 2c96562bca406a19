"""Procedural fundus photographs with diabetic-retinopathy lesions: an honest STAND-IN for the Kaggle and APTOS
retinopathy sets, which cannot be had offline. Named as such wherever it appears (``procedural-fundus``).

Each image is drawn from its grade (0-4, the International Clinical DR scale) and a camera:

* the fundus: an orange-red disc on black with a radial falloff and texture, the optic disc (a bright yellow
  spot left or right of centre, the eye's side at random), the darker macula, and ~8 vessel trees growing from
  the optic disc (random-walk branches that thin as they go);
* lesions whose number and kind follow the grade: microaneurysms (tiny red dots) from grade 1, haemorrhages
  (dark red blots) and hard exudates (yellow specks) from grade 2, more of all and cotton-wool spots (pale fuzzy
  patches) at grade 3, and new vessels (fine tangles by the optic disc) at grade 4. Counts are Poisson around
  grade-dependent means and each lesion's contrast is scaled by a per-image subtlety, so neighbouring grades
  overlap and referral (grade >= 2) is not trivial;
* a camera (:class:`Camera`): colour cast, brightness, vignetting, blur, sensor noise and JPEG quality. Two
  cameras define the "country" shift: ``eyepacs`` (the training population) and ``aptos`` (a warmer, brighter,
  blurrier camera with stronger vignetting).

:func:`write_procedural_retinopathy` writes a set in the Kaggle or APTOS layout, so the real loaders
(:mod:`credo.data.retinopathy`) are the ones that read it. Deterministic by seed.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from credo.io import atomic_write_bytes

KAGGLE_GRADE_MIX = (0.735, 0.070, 0.151, 0.025, 0.019)
"""Share of each grade in the Kaggle training labels (EyePACS), rounded."""
LESION_MEANS = {
    #            microaneurysms, haemorrhages, exudates, cotton wool, new vessels
    0: (0.3, 0.0, 0.1, 0.0, 0.0),
    1: (4.0, 0.4, 0.5, 0.0, 0.0),
    2: (9.0, 3.0, 4.0, 0.3, 0.0),
    3: (14.0, 12.0, 7.0, 2.5, 0.1),
    4: (14.0, 10.0, 7.0, 2.0, 2.5),
}
"""Poisson means of each lesion count per grade: grade 0 has the odd speck, as real healthy fundi do."""


@dataclass(frozen=True)
class Camera:
    """How a camera renders the fundus (a "country" of the shift)."""

    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-channel gain (colour cast)."""
    brightness: float = 1.0
    vignette: float = 0.35
    """Darkening at the rim of the fundus disc (0: none)."""
    blur: float = 0.6
    """Gaussian blur radius in pixels at 512 px (scaled with the size)."""
    noise: float = 0.02
    """Sensor noise standard deviation (pixels in [0, 1])."""
    jpeg_quality: int = 90


CAMERAS = {
    "eyepacs": Camera(),
    "aptos": Camera(
        tint=(1.08, 0.92, 0.80), brightness=1.12, vignette=0.6, blur=1.6, noise=0.035, jpeg_quality=75
    ),
}
"""The two cameras of the country shift."""


def render_fundus(
    grade: int, rng: np.random.Generator, camera: Camera = CAMERAS["eyepacs"], size: int = 256
) -> bytes:
    """One fundus photograph of ``grade`` as JPEG bytes (module docstring)."""
    from PIL import Image, ImageDraw, ImageFilter

    if grade not in range(5):
        raise ValueError(f"grade must be 0-4, got {grade}")
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    cx, cy = 0.5 + rng.normal(0, 0.015), 0.5 + rng.normal(0, 0.015)
    radius = 0.45 + rng.normal(0, 0.01)
    r = np.hypot(xx - cx, yy - cy) / radius
    inside = r < 1
    base = np.stack([0.78, 0.33, 0.14]) * rng.uniform(0.85, 1.1, 3)
    texture = _smooth_noise(rng, s, 12) * 0.08
    img = base[None, None, :] * (1 - 0.25 * r[..., None] ** 2) + texture[..., None] * base
    side = rng.choice([-1, 1])
    od = (cx + side * 0.22 * radius * 2, cy + rng.normal(0, 0.02))
    od_r = 0.07 + rng.normal(0, 0.005)
    d_od = np.hypot(xx - od[0], yy - od[1]) / od_r
    img += np.clip(1 - d_od, 0, 1)[..., None] ** 0.7 * np.array([0.35, 0.5, 0.25])
    d_mac = np.hypot(xx - (cx - side * 0.08), yy - cy) / 0.1
    img *= 1 - 0.25 * np.exp(-(d_mac**2))[..., None]
    canvas = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    px = lambda x, y: (x * s, y * s)  # noqa: E731
    for _ in range(8):  # vessel trees
        _vessel(draw, rng, od, rng.uniform(0, 2 * math.pi), 0.012 * s, 0.55 * radius, px, depth=0)
    subtlety = rng.uniform(0.45, 1.0)
    counts = rng.poisson(LESION_MEANS[grade])
    for _ in range(counts[0]):  # microaneurysms
        x, y = _spot(rng, cx, cy, radius)
        rr = rng.uniform(0.8, 1.8) * s / 256
        draw.ellipse([x * s - rr, y * s - rr, x * s + rr, y * s + rr], fill=_mix((150, 20, 15), subtlety))
    for _ in range(counts[1]):  # haemorrhages
        x, y = _spot(rng, cx, cy, radius)
        rr = rng.uniform(2.5, 6.5) * s / 256
        draw.ellipse(
            [x * s - rr, y * s - rr * rng.uniform(0.6, 1), x * s + rr, y * s + rr],
            fill=_mix((110, 10, 10), subtlety),
        )
    for _ in range(counts[2]):  # hard exudates, often in small clusters
        x, y = _spot(rng, cx, cy, radius * 0.7)
        for _ in range(rng.integers(1, 5)):
            dx, dy = rng.normal(0, 0.01, 2)
            rr = rng.uniform(0.8, 2.2) * s / 256
            draw.ellipse(
                [(x + dx) * s - rr, (y + dy) * s - rr, (x + dx) * s + rr, (y + dy) * s + rr],
                fill=_mix((235, 210, 90), subtlety),
            )
    for _ in range(counts[3]):  # cotton wool spots
        x, y = _spot(rng, cx, cy, radius * 0.8)
        rr = rng.uniform(4, 8) * s / 256
        draw.ellipse(
            [x * s - rr, y * s - rr, x * s + rr, y * s + rr], fill=_mix((225, 200, 170), 0.6 * subtlety)
        )
    for _ in range(counts[4]):  # new vessels near the optic disc
        start = (od[0] + rng.normal(0, 0.04), od[1] + rng.normal(0, 0.04))
        _vessel(draw, rng, start, rng.uniform(0, 2 * math.pi), 0.004 * s, 0.12, px, depth=2, tangle=True)
    canvas = canvas.filter(ImageFilter.GaussianBlur(camera.blur * s / 512 + 0.3))
    arr = np.asarray(canvas, dtype=np.float32) / 255
    arr = arr * np.array(camera.tint) * camera.brightness
    arr *= (1 - camera.vignette * np.clip(r, 0, 1) ** 3)[..., None]
    arr += rng.normal(0, camera.noise, arr.shape)
    arr[~inside] = 0.0
    out = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=camera.jpeg_quality)
    return buf.getvalue()


def _mix(colour: tuple[int, int, int], strength: float) -> tuple[int, int, int]:
    """The lesion colour blended toward the fundus's own orange by ``1 - strength`` (subtle lesions)."""
    background = np.array([190, 85, 40])
    return tuple(int(v) for v in background + strength * (np.array(colour) - background))


def _spot(rng: np.random.Generator, cx: float, cy: float, radius: float) -> tuple[float, float]:
    """A point uniform in the disc of ``radius`` around the centre (lesions avoid the very rim)."""
    rho, phi = radius * 0.9 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
    return cx + rho * math.cos(phi), cy + rho * math.sin(phi)


def _vessel(draw, rng, start, angle, width, length, px, depth: int, tangle: bool = False) -> None:
    """A random-walk vessel from ``start``, branching up to depth 3, thinning as it goes."""
    x, y = start
    steps = max(4, int(length / 0.02))
    turn = 0.6 if tangle else 0.18
    for i in range(steps):
        angle += rng.normal(0, turn)
        nx, ny = x + 0.02 * math.cos(angle), y + 0.02 * math.sin(angle)
        w = max(1.0, width * (1 - i / (steps * 1.6)))
        draw.line([px(x, y), px(nx, ny)], fill=(120, 25, 20), width=int(round(w)))
        x, y = nx, ny
        if depth < 3 and rng.uniform() < 0.12:
            _vessel(
                draw,
                rng,
                (x, y),
                angle + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9),
                w * 0.7,
                length * 0.5,
                px,
                depth + 1,
                tangle,
            )


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise ``[size, size]`` in about [-1, 1]: a ``cells x cells`` random grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, endpoint=False, dtype=np.float32)
    i, f = t.astype(int), t - t.astype(int)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]


def write_procedural_retinopathy(
    root: str | Path,
    n: int,
    seed: int = 0,
    camera: str = "eyepacs",
    layout: str = "kaggle-train",
    size: int = 256,
    grade_mix: tuple[float, ...] = KAGGLE_GRADE_MIX,
) -> Path:
    """Write ``n`` procedural fundus photographs under ``root`` in ``layout`` (``kaggle-train``, ``kaggle-test``
    or ``aptos``; :mod:`credo.data.retinopathy`), grades drawn from ``grade_mix``; returns the index file.
    Image ``i`` depends only on ``(seed, i)``, so a larger ``n`` extends a smaller set."""
    from credo.data.retinopathy import LAYOUTS

    if camera not in CAMERAS:
        raise ValueError(f"camera must be one of {', '.join(CAMERAS)}, got {camera!r}")
    index_name, (id_col, grade_col), folder, _ = LAYOUTS[layout]
    root = Path(root)
    (root / folder).mkdir(parents=True, exist_ok=True)
    mix = np.asarray(grade_mix, dtype=np.float64)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        grade = int(rng.choice(5, p=mix / mix.sum()))
        name = (
            f"{i}_{'left' if i % 2 == 0 else 'right'}"
            if layout.startswith("kaggle")
            else f"{seed:04x}{i:08x}"
        )
        data = render_fundus(grade, rng, CAMERAS[camera], size)
        if layout == "aptos":  # APTOS ships PNGs
            from PIL import Image

            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, format="PNG")
            data = buf.getvalue()
        atomic_write_bytes(root / folder / f"{name}{LAYOUTS[layout][3]}", data)
        rows.append(
            {id_col: name, grade_col: grade, **({"Usage": "Private"} if layout == "kaggle-test" else {})}
        )
    index = root / index_name
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(index, text.getvalue().encode())
    return index
