"""The training batches: step k's augmented crops (``_AugmentedBatches``), the steps of an epoch
(``_EpochSteps``) and the loader that makes them in worker processes (``_batch_loader``)."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

from .conditions import training_condition
from .config import TrainConfig
from .data import FolderData, RareClassSampler, augment, class_mix
from .geometry import training_camera

__all__ = ["default_workers"]


class _AugmentedBatches(torch.utils.data.Dataset):
    """Item k is step k of the run: epoch k // steps, its frames from that epoch's permutation
    and their augmentation from a generator seeded by (seed, epoch, step), so a batch is the
    same whichever process makes it, however many there are, and a resumed run goes on exactly."""

    def __init__(self, data: FolderData, cfg: TrainConfig, steps_per_epoch: int):
        self.data, self.cfg, self.steps = data, cfg, steps_per_epoch
        self.rare = RareClassSampler(data.labels) if cfg.rare_crops > 0 else None
        self.aspect = data.native_size[0] / data.native_size[1] if data.native_size else None

    def __len__(self):
        return 1 << 40          # indexed by the sampler, never iterated

    def __getitem__(self, k: int):
        cfg, (epoch, i) = self.cfg, divmod(k, self.steps)
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(self.data))
        rng = np.random.default_rng([cfg.seed, epoch, i])
        pairs = []
        for j in perm[i * cfg.batch:(i + 1) * cfg.batch]:
            focus = None
            # draws only when the option is on: the default recipe keeps its random stream
            if self.rare is not None and rng.random() < cfg.rare_crops:
                j, focus = self.rare.draw(rng)
            img, lab = self.data.images[j], self.data.labels[j]
            if cfg.geometry > 0 and rng.random() < cfg.geometry:
                # another camera's frame of the whole scene, before the crop; the rare-class
                # focus moved with it is not known, so that crop is left unfocused
                img, lab = training_camera(img, lab, rng, self.aspect)
                focus = None
            pairs.append(augment(img, lab, rng, cfg.size, (cfg.scale_min, cfg.scale_max), focus=focus))
        if cfg.class_mix > 0 and len(pairs) > 1:
            src = list(pairs)
            for n in range(len(pairs)):
                if rng.random() < cfg.class_mix:
                    pairs[n] = class_mix(*pairs[n], *src[(n + 1) % len(src)], rng)
        images = np.stack([p[0] for p in pairs])
        labels = np.stack([p[1] for p in pairs])
        if cfg.conditions <= 0:     # draws only when on: the recipe without it keeps its stream
            return images, labels
        cond = images.copy()
        for n in range(len(pairs)):
            if rng.random() < cfg.conditions:
                cond[n] = training_condition(images[n], labels[n], rng)
        if cfg.consistency > 0:
            return np.concatenate([images, cond]), labels
        return cond, labels


class _EpochSteps(torch.utils.data.Sampler):
    """The step indices of ``epoch`` (set before each pass; persistent workers keep the sampler)."""

    def __init__(self, steps_per_epoch: int):
        self.steps, self.epoch = steps_per_epoch, 0

    def __iter__(self):
        return iter(range(self.epoch * self.steps, (self.epoch + 1) * self.steps))

    def __len__(self):
        return self.steps


def _quiet_worker(_):
    import cv2
    # 0, not 1: a forked child inherits OpenCV's thread pool without its threads, and
    # resizing it to 1 there hangs; 0 runs every call inline
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def default_workers(device: torch.device) -> int:
    """0 on the CPU, where augmenting beside the loop only takes cores from the compute threads;
    on a GPU as many as the machine spares (up to 8), since in the loop it starves the GPU."""
    return 0 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


def _batch_loader(data: FolderData, cfg: TrainConfig, steps_per_epoch: int, device: torch.device):
    w = cfg.workers if cfg.workers is not None else default_workers(device)
    sampler = _EpochSteps(steps_per_epoch)
    loader = torch.utils.data.DataLoader(
        _AugmentedBatches(data, cfg, steps_per_epoch), batch_size=None, sampler=sampler, num_workers=w,
        persistent_workers=w > 0, prefetch_factor=4 if w else None, pin_memory=device.type == "cuda",
        worker_init_fn=_quiet_worker if w else None,
        # its own generator: each new pass would otherwise draw a seed from the global one,
        # shifting dropout's random stream with the worker count
        generator=torch.Generator(),
        timeout=300 if w else 0,      # a stuck worker raises instead of stalling the run
        multiprocessing_context=_worker_start_method() if w else None)
    return loader, sampler


def _worker_start_method() -> str:
    """fork shares the decoded frames copy-on-write (spawn would pickle them to every worker),
    but not once OpenVINO is loaded in this process: a child forked from its TBB thread pool
    hung, or crashed the parent, in the test suite after the flow's OpenVINO tests. Then
    forkserver, whose children start from a clean process."""
    import multiprocessing as mp
    methods = mp.get_all_start_methods()
    if "fork" in methods and "openvino" not in sys.modules:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"
