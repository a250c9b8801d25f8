"""Weather, light and sensor conditions: the CARLA-C robustness benchmark and the training
augmentation drawn from the same families.

A condition changes the camera image, never the label (a wet road is still Road).  Each is a
function ``(image RGB uint8 [H, W, 3], label uint8 [H, W], severity, rng) -> image``; the
label is read only where the physics needs it (which pixels are asphalt, which are sky).

Two ways to draw them, kept apart on purpose (Hendrycks & Dietterich, ICLR 2019: a model must
not be trained on the corruptions it is tested on):

* ``BENCHMARK``: fixed parameters per severity 1..3; every random choice inside (drop
  positions, puddle shapes, flare position) comes from a generator seeded by (seed, condition,
  severity, frame), so a report is the same on every machine for a given seed.
* ``TRAINING``: :func:`training_condition` draws a continuous severity, its own parameter
  ranges and, for fog, another implementation; rain comes with a wet road and an overcast
  sky, as it does on real rainy days.

The families are made with albumentations where it has them (rain streaks, lens spatter, fog,
sun flare, shadows, gamma, colour temperature, ISO and Gaussian noise, motion blur, defocus,
JPEG).  Written here, because no library does it: the label-aware wet road (the scene mirrored
into asphalt pixels about each object's contact line), night's headlight falloff, the
overcast sky, and the training fog (a depth-proxy haze ~20x cheaper than ``RandomFog``, which
takes ~200 ms a 512² frame).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from model_store.palette import CLASS_NAMES

__all__ = ["CONDITIONS", "SEVERITIES", "SKY", "ASPHALT", "apply_condition", "training_condition",
           "wet_road", "benchmark_seed"]

#: the label ids the physics reads, from the classes' one definition (CARLA: the sky is Unlabeled)
SKY = CLASS_NAMES.index("Unlabeled")
ASPHALT = (CLASS_NAMES.index("RoadLine"), CLASS_NAMES.index("Road"))
SIDEWALK = CLASS_NAMES.index("Sidewalk")
SEVERITIES = (1, 2, 3)


def _album(transform, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import albumentations as A
    c = A.Compose([transform], seed=int(rng.integers(2 ** 31)))
    return c(image=np.ascontiguousarray(img))["image"]


def _mix(a: np.ndarray, b: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    if isinstance(alpha, np.ndarray) and alpha.ndim == 2:
        alpha = alpha[..., None]
    return a.astype(np.float32) * (1 - alpha) + b.astype(np.float32) * alpha


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)


def _smooth_noise(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells``-wide grid upsampled with cubic
    interpolation (puddles, haze density)."""
    g = rng.random((max(2, cells * h // w), max(2, cells))).astype(np.float32)
    n = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip((n - n.min()) / max(1e-6, float(n.max() - n.min())), 0, 1)


# ---------------------------------------------------------------------------------------
# hand-written families

def wet_road(img: np.ndarray, lab: np.ndarray, strength: float, darkness: float, rng: np.random.Generator,
             blur: float = 3.0, puddle_cells: int = 6, ripple: float = 1.5) -> np.ndarray:
    """Rain-soaked asphalt: each road pixel reflects what stands on the road above it in its
    column (mirrored about that object's contact line, so a car's reflection lies below the
    car and a building's below the kerb), blurred and rippled as on a rough wet surface, with
    puddles that reflect more; asphalt darker and less saturated; sidewalks a little.

    ``strength`` 0..1 is the reflection's weight outside puddles, ``darkness`` 0..1 the
    asphalt's loss of light.  The label is unchanged: this is what turns road into "Car" for a
    model that never saw a wet road."""
    h, w = lab.shape
    road = np.isin(lab, ASPHALT)
    wet = road | (lab == SIDEWALK)
    if not wet.any():
        return img
    rows = np.arange(h)[:, None]
    # the contact line: the last non-road row above each pixel, per column
    contact = np.maximum.accumulate(np.where(~road, rows, -1), axis=0)
    src_y = 2 * contact - rows
    src_y += np.round(rng.normal(0, ripple, (h, 1)) * (rows / h)).astype(int)  # ripples, nearer = more
    src_y = np.clip(src_y, 0, h - 1)
    xs = np.arange(w)[None, :].repeat(h, 0)
    refl = img[src_y, xs]
    refl = cv2.GaussianBlur(refl, (0, 0), sigmaX=max(0.1, blur * 0.4), sigmaY=max(0.1, blur))
    # Fresnel: a grazing view (near the contact line) reflects more than a steep one
    dist = np.clip((rows - np.maximum(contact, 0)) / (0.5 * h), 0, 1)
    fresnel = 1.0 - 0.6 * dist
    puddles = _smooth_noise(h, w, puddle_cells, rng)
    puddles = np.clip((puddles - 0.55) * 4, 0, 1)
    alpha = np.clip(strength * fresnel * (0.55 + 0.45 * puddles) + 0.35 * puddles * strength, 0, 0.92)
    alpha = np.where(road, alpha, np.where(lab == SIDEWALK, 0.3 * alpha, 0)).astype(np.float32)
    base = img.astype(np.float32)
    grey = base.mean(2, keepdims=True)
    dark = (0.6 * base + 0.4 * grey) * (1 - 0.6 * darkness)           # wet asphalt: darker, duller
    base = np.where(wet[..., None], dark, base)
    return _u8(_mix(base, refl, alpha))


def _night(img: np.ndarray, lab: np.ndarray, level: float, rng: np.random.Generator,
           headlight: float = 0.7, warm: float = 0.1) -> np.ndarray:
    """Low light: the scene at a fraction of its exposure, lit mostly by the ego car's
    headlights (a falloff from the bottom centre), a dark sky, then sensor noise."""
    h, w = lab.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w * (0.5 + rng.uniform(-0.05, 0.05))
    beam = np.exp(-(((xs - cx) / (0.45 * w)) ** 2 + ((ys - h) / (0.45 * h)) ** 2))
    ambient = 0.42 - 0.3 * level
    gain = ambient + headlight * (1 - 0.3 * level) * beam
    gain = np.where(lab == SKY, ambient * 0.6, gain)
    x = img.astype(np.float32) / 255.0
    x = np.power(x, 1.0 + 0.4 * level) * gain[..., None]
    x[..., 0] *= 1 + warm                                          # sodium / halogen light
    x[..., 2] *= 1 - warm
    return _u8(x * 255)


def _overcast(img: np.ndarray, lab: np.ndarray, level: float, rng: np.random.Generator,
              grey: float = 185.0) -> np.ndarray:
    """A flat grey day: no direct sun, so less contrast and colour, a uniform light-grey sky."""
    x = img.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * (1 - 0.35 * level) + mean * (1 - 0.12 * level)
    g = x.mean(2, keepdims=True)
    x = x * (1 - 0.5 * level) + g * 0.5 * level
    sky = lab == SKY
    tone = grey + rng.normal(0, 4) + 12 * _smooth_noise(*lab.shape, 4, rng)[..., None] - 6
    x = np.where(sky[..., None], x * (1 - 0.8 * level) + tone * 0.8 * level, x)
    return _u8(x)


def _haze(img: np.ndarray, lab: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Training fog: a haze whose thickness grows towards the horizon (rows near the
    vanishing line are far away), uneven, blended towards a light grey."""
    h, w = lab.shape
    horizon = h * rng.uniform(0.35, 0.55)
    rows = np.arange(h, dtype=np.float32)[:, None]
    depth = np.exp(-np.abs(rows - horizon) / (h * rng.uniform(0.15, 0.35)))
    t = density * (0.6 * depth + 0.4) * (0.7 + 0.3 * _smooth_noise(h, w, 5, rng))
    t = np.clip(t, 0, 0.95)
    fog = rng.uniform(170, 225)
    soft = cv2.GaussianBlur(img, (0, 0), 1.0 + 2 * density)
    return _u8(_mix(soft, np.full_like(img, fog), t))


def _tint(img: np.ndarray, r: float, g: float, b: float) -> np.ndarray:
    """A fixed white balance: the benchmark's colour temperature (albumentations'
    PlanckianJitter only draws within a range that must contain daylight)."""
    return _u8(img.astype(np.float32) * np.array([r, g, b], np.float32))


def _dark_sky(img: np.ndarray, lab: np.ndarray, amount: float) -> np.ndarray:
    x = img.astype(np.float32)
    g = x.mean(2, keepdims=True)
    dull = (0.3 * x + 0.7 * g) * (1 - amount)
    return _u8(np.where((lab == SKY)[..., None], dull, x))


# ---------------------------------------------------------------------------------------
# the benchmark: fixed parameters per severity

def _bench_rain(img, lab, s, rng):
    import albumentations as A
    kind = ("drizzle", "heavy", "torrential")[s - 1]
    img = _dark_sky(img, lab, 0.15 * s)
    img = _album(A.RandomRain(slant_range=(-6, 6), drop_length=12 + 8 * s, drop_width=1, blur_value=3,
                              brightness_coefficient=1 - 0.12 * s, rain_type=kind, p=1), img, rng)
    if s >= 2:   # splashes on the lens
        img = _album(A.Spatter(mode="rain", intensity=(0.3 * s, 0.3 * s), cutout_threshold=(0.7, 0.7), p=1), img, rng)
    return img


def _bench_wet_road(img, lab, s, rng):
    return wet_road(img, lab, strength=(0.25, 0.45, 0.65)[s - 1], darkness=(0.2, 0.35, 0.5)[s - 1], rng=rng,
                    blur=3.0, puddle_cells=6, ripple=1.5)


def _bench_dusk(img, lab, s, rng):
    import albumentations as A
    img = _tint(img, (1.08, 1.16, 1.25)[s - 1], (0.97, 0.93, 0.88)[s - 1], (0.85, 0.72, 0.58)[s - 1])
    g = (130, 170, 220)[s - 1]
    img = _album(A.RandomGamma(gamma_limit=(g, g), p=1), img, rng)
    img = _album(A.RandomShadow(shadow_roi=(0, 0.45, 1, 1), num_shadows_limit=(s, s), shadow_dimension=4,
                                shadow_intensity_range=(0.3 + 0.1 * s, 0.3 + 0.1 * s), p=1), img, rng)
    h, w = lab.shape
    return _album(A.RandomSunFlare(flare_roi=(0, 0.15, 1, 0.45), src_radius=int(w * (0.04 + 0.03 * s)),
                                   src_color=(255, 190, 120), num_flare_circles_range=(3, 6), p=1), img, rng)


def _bench_night(img, lab, s, rng):
    import albumentations as A
    img = _night(img, lab, level=s / 3, rng=rng, headlight=0.7, warm=0.1)
    return _album(A.ISONoise(color_shift=(0.02, 0.02), intensity=(0.15 * s, 0.15 * s), p=1), img, rng)


def _bench_fog(img, lab, s, rng):
    import albumentations as A
    f = (0.3, 0.5, 0.7)[s - 1]
    return _album(A.RandomFog(fog_coef_range=(f, f), alpha_coef=0.1, p=1), img, rng)


def _bench_overcast(img, lab, s, rng):
    return _overcast(img, lab, level=s / 3, rng=rng)


def _bench_motion_blur(img, lab, s, rng):
    import albumentations as A
    k = (7, 13, 21)[s - 1]
    return _album(A.MotionBlur(blur_limit=(k, k), allow_shifted=False, p=1), img, rng)


def _bench_noise(img, lab, s, rng):
    import albumentations as A
    sd = (0.04, 0.08, 0.14)[s - 1]
    return _album(A.GaussNoise(std_range=(sd, sd), p=1), img, rng)


def _bench_jpeg(img, lab, s, rng):
    import albumentations as A
    q = (25, 12, 6)[s - 1]
    return _album(A.ImageCompression(quality_range=(q, q), p=1), img, rng)


def _bench_defocus(img, lab, s, rng):
    import albumentations as A
    r = (3, 5, 8)[s - 1]
    return _album(A.Defocus(radius=(r, r), alias_blur=(0.2, 0.2), p=1), img, rng)


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str                   # weather | light | sensor
    apply: Callable             # (img, lab, severity 1..3, rng) -> img


#: the benchmark, in report order
CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("rain", "weather", _bench_rain),
    Condition("wet_road", "weather", _bench_wet_road),
    Condition("fog", "weather", _bench_fog),
    Condition("overcast", "weather", _bench_overcast),
    Condition("dusk", "light", _bench_dusk),
    Condition("night", "light", _bench_night),
    Condition("motion_blur", "sensor", _bench_motion_blur),
    Condition("gaussian_noise", "sensor", _bench_noise),
    Condition("jpeg", "sensor", _bench_jpeg),
    Condition("defocus", "sensor", _bench_defocus),
)}


def benchmark_seed(seed: int, condition: str, severity: int, frame: int) -> np.random.Generator:
    """The generator of one (condition, severity, frame) of the benchmark."""
    tag = list(condition.encode())
    return np.random.default_rng([seed, *tag, severity, frame])


def apply_condition(name: str, img: np.ndarray, lab: np.ndarray, severity: int, rng: np.random.Generator):
    """The benchmark's condition ``name`` at ``severity`` 1..3 (RGB uint8 in and out)."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
    out = CONDITIONS[name].apply(img, lab, severity, rng)
    assert out.shape == img.shape and out.dtype == np.uint8
    return out


# ---------------------------------------------------------------------------------------
# training: other draws, other parameter ranges, rain with its wet road

def _train_rain(img, lab, rng):
    import albumentations as A
    img = _overcast(img, lab, level=rng.uniform(0.3, 1.0), rng=rng, grey=rng.uniform(140, 200))
    if rng.random() < 0.85:
        img = wet_road(img, lab, strength=rng.uniform(0.2, 0.8), darkness=rng.uniform(0.1, 0.6), rng=rng,
                       blur=rng.uniform(1.5, 6), puddle_cells=int(rng.integers(3, 12)), ripple=rng.uniform(0.5, 3))
    if rng.random() < 0.7:
        img = _album(A.RandomRain(slant_range=(-15, 15), drop_length=int(rng.integers(8, 40)),
                                  drop_width=int(rng.integers(1, 3)), blur_value=int(rng.choice([1, 3, 5])),
                                  brightness_coefficient=rng.uniform(0.6, 1.0),
                                  rain_type=str(rng.choice(["default", "drizzle", "heavy"])), p=1), img, rng)
    if rng.random() < 0.25:
        v = rng.uniform(0.2, 0.8)
        img = _album(A.Spatter(mode="rain", intensity=(v, v), p=1), img, rng)
    return img


def _train_wet_road(img, lab, rng):
    return wet_road(img, lab, strength=rng.uniform(0.15, 0.85), darkness=rng.uniform(0.05, 0.65), rng=rng,
                    blur=rng.uniform(1.0, 7.0), puddle_cells=int(rng.integers(3, 14)), ripple=rng.uniform(0.3, 3.5))


def _train_dusk(img, lab, rng):
    import albumentations as A
    img = _tint(img, rng.uniform(1.0, 1.35), rng.uniform(0.82, 1.0), rng.uniform(0.5, 0.92))
    if rng.random() < 0.3:      # and a colour temperature from the black-body curve on top
        img = _album(A.PlanckianJitter(mode="blackbody", temperature_limit=(3000, 7000), p=1), img, rng)
    img = _album(A.RandomGamma(gamma_limit=(110, 260), p=1), img, rng)
    if rng.random() < 0.6:
        img = _album(A.RandomShadow(shadow_roi=(0, 0.3, 1, 1), num_shadows_limit=(1, 4), shadow_dimension=5,
                                    shadow_intensity_range=(0.2, 0.7), p=1), img, rng)
    if rng.random() < 0.5:
        h, w = lab.shape
        img = _album(A.RandomSunFlare(flare_roi=(0, 0.05, 1, 0.55), src_radius=int(w * rng.uniform(0.04, 0.15)),
                                      src_color=(255, int(rng.integers(150, 240)), int(rng.integers(80, 200))),
                                      num_flare_circles_range=(2, 8), p=1), img, rng)
    return img


def _train_night(img, lab, rng):
    import albumentations as A
    img = _night(img, lab, level=rng.uniform(0.2, 1.1), rng=rng, headlight=rng.uniform(0.3, 1.0),
                 warm=rng.uniform(-0.05, 0.25))
    if rng.random() < 0.5:
        img = wet_road(img, lab, strength=rng.uniform(0.1, 0.5), darkness=0.0, rng=rng)
    return _album(A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.05, 0.6), p=1), img, rng)


def _train_fog(img, lab, rng):
    return _haze(img, lab, density=rng.uniform(0.2, 0.85), rng=rng)


def _train_overcast(img, lab, rng):
    return _overcast(img, lab, level=rng.uniform(0.2, 1.0), rng=rng, grey=rng.uniform(150, 215))


def _train_sensor(img, lab, rng):
    import albumentations as A
    t = rng.choice(4)
    if t == 0:
        k = int(rng.choice([3, 5, 9, 15, 19]))
        return _album(A.MotionBlur(blur_limit=(k, k), p=1), img, rng)
    if t == 1:
        return _album(A.GaussNoise(std_range=(0.02, 0.12), p=1), img, rng)
    # blur radii and JPEG qualities are deterministic given the value: none of the benchmark's
    if t == 2:
        q = int(rng.choice([8, 10, 15, 18, 20, 30, 35, 40]))
        return _album(A.ImageCompression(quality_range=(q, q), p=1), img, rng)
    r = int(rng.choice([2, 4, 6, 7]))
    return _album(A.Defocus(radius=(r, r), alias_blur=(0.1, 0.4), p=1), img, rng)


#: family -> (weight, draw); the weather and light the shipped model failed on weigh most
TRAINING: dict[str, tuple[float, Callable]] = {
    "rain": (3.0, _train_rain),
    "wet_road": (2.0, _train_wet_road),
    "dusk": (3.0, _train_dusk),
    "night": (1.5, _train_night),
    "fog": (1.0, _train_fog),
    "overcast": (1.5, _train_overcast),
    "sensor": (1.5, _train_sensor),
}


def training_condition(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One training draw: a family by weight, its parameters at random; now and then a sensor
    fault on top (a camera in the rain is also a camera with a blurred, compressed picture)."""
    names = list(TRAINING)
    p = np.array([TRAINING[n][0] for n in names])
    name = names[int(rng.choice(len(names), p=p / p.sum()))]
    img = TRAINING[name][1](img, lab, rng)
    if name != "sensor" and rng.random() < 0.2:
        img = _train_sensor(img, lab, rng)
    return img
