"""Datasets: a folder of images/ + labels/, the time split, a synthetic scene generator,
and augmentation.  numpy + OpenCV only (no torch), so the streaming side can reuse it.

Label formats accepted (converted to uint8 class ids on load):
  * single-channel 8-bit ids (``labels/NNNN.png``, the shared CARLA set);
  * Lyft challenge RGB labels, id in the red channel (G and B are not a palette);
  * RGB labels drawn in the CARLA colour palette (``model_store.palette``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model_store.palette import NUM_CLASSES, PALETTE, rgb_palette_to_ids

__all__ = ["DataError", "read_image", "read_label", "find_pairs", "FolderData", "load_folder",
           "time_split", "synthetic_scene", "synthetic_data", "augment", "resize_pair",
           "RareClassSampler", "RARE_TEMPERATURE", "class_mix",
           "MEAN", "STD"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: normalisation used by the network (the same constants are baked into the ONNX graph).
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


def read_image(path) -> np.ndarray:
    """RGB uint8 [H, W, 3]."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot read image (missing, empty or not an image file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path) -> np.ndarray:
    """Class ids uint8 [H, W] from any of the accepted label formats."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DataError(f"{path}: cannot read label image (missing, empty or not an image file)")
    if lab.dtype != np.uint8:
        raise DataError(f"{path}: label must be 8-bit, found dtype {lab.dtype}")
    if lab.ndim == 3:
        if lab.shape[2] == 4:
            lab = lab[..., :3]
        rgb = lab[..., ::-1]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            lab = rgb[..., 0]                      # grey saved as RGB
        else:
            ids = rgb_palette_to_ids(rgb)
            lab = ids if ids is not None else rgb[..., 0]   # CARLA palette, else Lyft red channel
    lab = np.ascontiguousarray(lab)
    mx = int(lab.max()) if lab.size else 0
    if mx >= NUM_CLASSES:
        bad = np.argwhere(lab >= NUM_CLASSES)[0]
        raise DataError(f"{path}: class id {mx} > {NUM_CLASSES - 1} (first at row {bad[0]}, col {bad[1]}); "
                        f"expected ids 0..{NUM_CLASSES - 1}")
    return lab


def find_pairs(root) -> list[tuple[Path, Path]]:
    """(image, label) pairs of ``root/images`` and ``root/labels`` matched by file stem, sorted."""
    root = Path(root)
    idir, ldir = root / "images", root / "labels"
    for d in (idir, ldir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (expected {root}/images and {root}/labels)")
    labels = {p.stem: p for p in ldir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    pairs, missing = [], []
    for p in sorted(idir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem in labels:
            pairs.append((p, labels[p.stem]))
        else:
            missing.append(p.name)
    if missing:
        raise DataError(f"{ldir}: no label for {len(missing)} image(s), e.g. {missing[:3]}")
    if not pairs:
        raise DataError(f"{idir}: no images found")
    return pairs


@dataclass
class FolderData:
    """A dataset decoded into memory: images uint8 [N, H, W, 3], labels uint8 [N, H, W];
    ``native_size`` (w, h) of the files when they were resized on load (the camera's aspect,
    which ``trainer.geometry`` needs for frames squashed to a square)."""
    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    native_size: tuple[int, int] | None = None

    def __len__(self):
        return len(self.names)

    def subset(self, idx) -> "FolderData":
        idx = list(idx)
        return FolderData(self.images[idx], self.labels[idx], [self.names[i] for i in idx], self.native_size)


def resize_pair(img, lab, size):
    """Resize an image (linear/area) and its label (nearest) to (w, h) = size."""
    w, h = size
    interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_LINEAR
    return (cv2.resize(img, (w, h), interpolation=interp),
            cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST))


def load_folder(root, size: int | tuple[int, int] | None = 512, limit: int | None = None) -> FolderData:
    """Decode every pair once into memory, resized to ``size`` (w, h) or kept native (None)."""
    pairs = find_pairs(root)[:limit]
    if isinstance(size, int):
        size = (size, size)
    imgs, labs, native = [], [], None
    for ip, lp in pairs:
        img, lab = read_image(ip), read_label(lp)
        if img.shape[:2] != lab.shape[:2]:
            raise DataError(f"{lp}: label size {lab.shape[1]}x{lab.shape[0]} does not match "
                            f"image {ip.name} size {img.shape[1]}x{img.shape[0]}")
        native = native or (img.shape[1], img.shape[0])
        if size is not None:
            img, lab = resize_pair(img, lab, size)
        elif imgs and img.shape != imgs[0].shape:
            raise DataError(f"{ip}: size {img.shape[1]}x{img.shape[0]} differs from the first image; pass a size")
        imgs.append(img)
        labs.append(lab)
    return FolderData(np.stack(imgs), np.stack(labs), [p[0].stem for p in pairs], native)


def time_split(n: int, val_fraction: float = 0.2, gap: int = 10,
               val_at: str = "end") -> tuple[list[int], list[int]]:
    """Consecutive frames: validate on the last ``val_fraction`` (``val_at="end"``) or the
    first (``"start"``, a second fold of the same drive) and train on the rest, dropping
    ``gap`` frames in between so near-duplicates do not leak.

    ``val_fraction=0`` trains on every frame (the final fit, once the recipe was chosen on a
    real split) and returns no validation frames."""
    if val_at not in ("end", "start"):
        raise ValueError(f"time_split: val_at must be 'end' or 'start', not {val_at!r}")
    if val_fraction == 0:
        return list(range(n)), []
    n_val = max(1, int(round(n * val_fraction)))
    n_train = n - n_val - gap
    if n_train < 1:
        raise ValueError(f"time_split: {n} frames are too few for val_fraction={val_fraction}, gap={gap}")
    if val_at == "start":
        return list(range(n_val + gap, n)), list(range(n_val))
    return list(range(n_train)), list(range(n - n_val, n))


# ---------------------------------------------------------------------------------------
# synthetic scenes

def synthetic_scene(rng: np.random.Generator, h: int = 64, w: int = 64):
    """A crude street: sky, buildings, road with a line, sidewalk, a car, a pole.
    Colours are noisy class colours, so a small net can learn them quickly."""
    lab = np.zeros((h, w), np.uint8)                   # sky / unlabeled
    horizon = int(h * rng.uniform(0.35, 0.55))
    x = 0
    while x < w:                                       # buildings / vegetation / wall
        bw = int(rng.integers(max(2, w // 8), max(3, w // 3)))
        top = int(rng.integers(h // 10, horizon))
        lab[top:horizon, x:x + bw] = rng.choice([1, 1, 9, 11])
        x += bw
    lab[horizon:] = 8                                  # sidewalk
    left, right = int(w * rng.uniform(0.1, 0.3)), int(w * rng.uniform(0.7, 0.9))
    lab[horizon:, left:right] = 7                      # road
    mid = (left + right) // 2
    lab[horizon + 2:, mid:mid + max(1, w // 40)] = 6   # road line
    cw, ch = int(w * rng.uniform(0.15, 0.3)), int(h * rng.uniform(0.1, 0.2))
    cx = int(rng.integers(left, max(left + 1, right - cw)))
    cy = int(rng.integers(horizon, max(horizon + 1, h - ch)))
    lab[cy:cy + ch, cx:cx + cw] = 10                   # car
    px = int(rng.integers(0, w - 2))
    lab[h // 5:horizon + h // 8, px:px + max(1, w // 64)] = 5   # pole
    base = PALETTE.astype(np.float32)                  # each class drawn in its CARLA colour,
    base[0] = (90, 150, 230)                           # but the sky (Unlabeled) blue
    img = base[lab] + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def synthetic_data(n: int, h: int = 64, w: int = 64, seed: int = 0) -> FolderData:
    rng = np.random.default_rng(seed)
    pairs = [synthetic_scene(rng, h, w) for _ in range(n)]
    return FolderData(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]),
                      [f"synthetic{i:04d}" for i in range(n)])


def write_folder(data: FolderData, root) -> None:
    """Write a FolderData as ``root/images/*.png`` + ``root/labels/*.png`` (single-channel ids)."""
    root = Path(root)
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "labels", exist_ok=True)
    for img, lab, name in zip(data.images, data.labels, data.names):
        cv2.imwrite(str(root / "images" / f"{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "labels" / f"{name}.png"), lab)


# ---------------------------------------------------------------------------------------
# augmentation

def augment(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, crop: int,
            scale=(0.5, 1.5), flip: bool = True, color: bool = True, focus: tuple[int, int] | None = None):
    """Random scale + crop to ``crop`` x ``crop``, horizontal flip, HSV + brightness/contrast
    jitter.  ``scale`` > 1 zooms in (the crop covers fewer source pixels).  ``focus`` (y, x):
    a source pixel the crop must contain (the rare-class sampler's pick)."""
    h, w = lab.shape
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    aspect = float(np.exp(rng.uniform(-0.15, 0.15)))
    rh = int(round(min(h, crop / s * aspect)))
    rw = int(round(min(w, crop / s / aspect)))
    if focus is None:
        y0 = int(rng.integers(0, h - rh + 1))
        x0 = int(rng.integers(0, w - rw + 1))
    else:
        fy, fx = focus
        y0 = int(rng.integers(max(0, fy - rh + 1), min(fy, h - rh) + 1))
        x0 = int(rng.integers(max(0, fx - rw + 1), min(fx, w - rw) + 1))
    img = img[y0:y0 + rh, x0:x0 + rw]
    lab = lab[y0:y0 + rh, x0:x0 + rw]
    img = cv2.resize(img, (crop, crop), interpolation=cv2.INTER_AREA if rw > crop else cv2.INTER_LINEAR)
    lab = cv2.resize(lab, (crop, crop), interpolation=cv2.INTER_NEAREST)
    if flip and rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    if color:
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180          # hue (OpenCV: 0..180)
        hsv[..., 1] *= rng.uniform(0.6, 1.4)                              # saturation
        hsv[..., 2] *= rng.uniform(0.65, 1.35)                            # brightness
        img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        c = rng.uniform(0.75, 1.25)                                        # contrast
        img = (img - img.mean()) * c + img.mean()
        if rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
        img += rng.normal(0, rng.uniform(0, 6), img.shape).astype(np.float32)
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


#: temperature of the rare-class sampler's class draw (lower favours the rarest classes more)
RARE_TEMPERATURE = 0.1


class RareClassSampler:
    """Draws (frame, pixel) pairs that favour rare classes (DAFormer's rare class sampling, at the
    pixel level): a class c with probability ~ exp((1 - f_c) / T), f_c its share of the training
    pixels; then a frame with probability ~ its pixels of c; then one of those pixels, which the
    crop is made to contain.  Every frame of this drive shows a little fence and vegetation, so
    picking frames by presence alone would change nothing; picking the crop around them does."""

    def __init__(self, labels: np.ndarray, temperature: float = RARE_TEMPERATURE):
        counts = np.stack([np.bincount(l.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES] for l in labels])
        share = counts.sum(0) / max(1, counts.sum())
        logits = np.where(counts.sum(0) > 0, (1 - share) / temperature, -np.inf)
        self.class_p = np.exp(logits - logits.max())
        self.class_p /= self.class_p.sum()
        self.frame_p = counts / np.maximum(counts.sum(0), 1)        # [frame, class], columns sum to 1
        self.labels = labels

    def draw(self, rng: np.random.Generator) -> tuple[int, tuple[int, int]]:
        c = int(rng.choice(NUM_CLASSES, p=self.class_p))
        j = int(rng.choice(len(self.labels), p=self.frame_p[:, c]))
        ys, xs = np.nonzero(self.labels[j] == c)
        k = int(rng.integers(len(ys)))
        return j, (int(ys[k]), int(xs[k]))


def class_mix(img: np.ndarray, lab: np.ndarray, src_img: np.ndarray, src_lab: np.ndarray,
              rng: np.random.Generator):
    """ClassMix: paste the pixels of a random half of the classes in ``src`` over ``img``, so
    classes are seen against backgrounds this one drive never put them on."""
    present = np.unique(src_lab)
    chosen = rng.choice(present, size=(len(present) + 1) // 2, replace=False)
    m = np.isin(src_lab, chosen)
    img, lab = img.copy(), lab.copy()
    img[m], lab[m] = src_img[m], src_lab[m]
    return img, lab
