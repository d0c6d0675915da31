"""Pathfinder and Path-X (Long Range Arena, Tay et al. 2021): our own generator, PNG release writer, loader, CLI.

The task comes from Linsley, Kim, Veerabadran, Windolf and Serre (2018), "Learning long-range spatial
dependencies with horizontal gated recurrent units" (NeurIPS): an image holds dashed curved paths ("snakes")
and two circular markers; the label says whether the markers sit on the two ends of the same path (1) or on
ends of two different paths (0). LRA feeds the pixels as a flat sequence of tokens 0..255: Pathfinder at
32x32 (length 1024), Path-X at 128x128 (length 16384), both at the "hard" contour length of 14 paddles.

The generator here is written from that published description (no code of the original is used):

* A path is a chain of ``contour_length`` paddles (short straight segments) separated by small gaps. Each
  paddle turns by at most ``max_turn`` from the previous one (smooth curvature). Difficulty = contour length
  in paddles: easy 6, medium 9, hard 14.
* Every image holds two *target* paths of the full contour length plus distractor paths of a third of that
  length. The geometry is drawn before the label is known, so ink and pixel histogram cannot depend on it;
  then the two markers go on both ends of one target path (positive, label 1) or on one end of each target
  path (negative, label 0). Positive and negative images are therefore the same kind of picture and only the
  connectivity between the markers decides the label.
* Different paths keep a clearance (centre line to centre line) larger than the gap inside a path, the
  neighbourhood of every target-path end (where a marker may go) is kept free of other paths, and a path
  keeps that clearance from its own non-adjacent paddles: two markers are joined by ink (up to the gap
  size) exactly when they are on the same path. Placement is rejection sampling: ``candidates`` random
  continuations per step, the first valid one is taken; a target path that gets stuck is redrawn, and an
  image whose target paths cannot be placed is redrawn; a distractor that cannot be placed is left out.
* All sizes are given for 32x32 and scale linearly with the resolution (64, 128 = Path-X, 256).
* Vectorised: all images of a folder grow their paths in lockstep (arrays over images x candidates x placed
  paddles); paddles and markers are rasterised by a distance-to-segment / distance-to-centre computation on
  small pixel patches with an anti-aliased edge. Pixels are uint8, background 0, ink up to 255.
* Seeded: folder ``k`` of a release is drawn from ``numpy.random.default_rng([seed, k])``, so the output is
  byte-identical for a seed whatever the number of worker processes.

Release layout (the official ``lra_release/pathfinder{32,64,128,256}/`` has the same one, so the loader reads
both)::

    pathfinder{res}/curv_contour_length_{6|9|14}/imgs/<k>/sample_<i>.png
    pathfinder{res}/curv_contour_length_{6|9|14}/metadata/<k>.npy

A metadata file is, despite its name, a text file of lines ``imgs/<k> sample_<i>.png <i> <label>`` (the
official files carry more columns; the loader uses columns 0, 1 and 3). The official release names the easy
folder ``curv_baseline``; the loader accepts that name too.

Generate the LRA sizes with::

    python -m lra.data.pathfinder --out data --resolution 32 --difficulty hard --num 200000 --seed 0
    python -m lra.data.pathfinder --out data --resolution 128 --difficulty hard --num 200000 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DIFFICULTIES = {"easy": 6, "medium": 9, "hard": 14}
RESOLUTIONS = (32, 64, 128, 256)
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 0  # the fixed permutation that assigns examples to train/val/test
DEFAULTS = {"num": 200_000, "seed": 0, "per_folder": 1000}
GENERATOR_VERSION = 1
CACHE_NAME = "decoded-cache.npz"
CACHE_FORMAT = 1
PROVENANCE_NAME = "generator.json"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """Generator parameters in pixels of the output resolution (see ``params_for``)."""

    resolution: int
    contour_length: int  # paddles per target path
    paddle_length: float  # centre-line length of one paddle
    paddle_width: float  # stroke width
    gap_min: float  # gap between consecutive paddles of one path (end to start)
    gap_max: float
    max_turn: float  # largest change of direction between consecutive paddles, radians
    marker_radius: float
    clearance: float  # least centre-line distance between different paths
    distractor_length: int  # paddles per distractor path
    num_distractors: int
    candidates: int  # random continuations tried per step
    path_attempts: int  # tries to draw one path before giving up
    border: float  # least distance of a centre line from the image edge


def contour_length_of(difficulty: str | int) -> int:
    """6, 9 or 14 for "easy", "medium", "hard" (a contour length itself is accepted too)."""
    if isinstance(difficulty, str) and difficulty in DIFFICULTIES:
        return DIFFICULTIES[difficulty]
    if isinstance(difficulty, int | np.integer) and int(difficulty) in DIFFICULTIES.values():
        return int(difficulty)
    if isinstance(difficulty, str) and difficulty.isdigit() and int(difficulty) in DIFFICULTIES.values():
        return int(difficulty)
    valid = ", ".join(f"{k} ({v})" for k, v in DIFFICULTIES.items())
    raise ValueError(f"unknown Pathfinder difficulty {difficulty!r}; valid: {valid}")


def params_for(resolution: int = 32, difficulty: str | int = "hard") -> Params:
    """The generator's sizes: chosen at 32x32 and scaled linearly with ``resolution``."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unsupported Pathfinder resolution {resolution}; valid: {', '.join(map(str, RESOLUTIONS))}")
    n = contour_length_of(difficulty)
    s = resolution / 32
    distractor_length = max(2, n // 3)
    return Params(
        resolution=resolution,
        contour_length=n,
        paddle_length=2.0 * s,
        paddle_width=1.0 * s,
        gap_min=1.0 * s,
        gap_max=1.5 * s,
        max_turn=math.radians(40.0),
        marker_radius=1.5 * s,
        clearance=3.0 * s,
        distractor_length=distractor_length,
        num_distractors=max(2, round(16 / distractor_length)),
        candidates=8,
        path_attempts=6,
        border=1.0 * s,
    )


# --------------------------------------------------------------------------- geometry


def _point_segment_d2(px, py, ax, ay, bx, by):
    """Squared distance from points to segments (all arguments broadcast)."""
    abx = bx - ax
    aby = by - ay
    apx = px - ax
    apy = py - ay
    den = np.maximum(abx * abx + aby * aby, 1e-12)
    t = np.clip((apx * abx + apy * aby) / den, 0.0, 1.0)
    dx = apx - t * abx
    dy = apy - t * aby
    return dx * dx + dy * dy


def _segment_segment_d2(p0x, p0y, p1x, p1y, q0x, q0y, q1x, q1y):
    """Squared distance between segments p0-p1 and q0-q1 (broadcast): 0 where they cross, otherwise the
    least of the four endpoint-to-segment distances."""
    d2 = np.minimum(
        np.minimum(_point_segment_d2(p0x, p0y, q0x, q0y, q1x, q1y), _point_segment_d2(p1x, p1y, q0x, q0y, q1x, q1y)),
        np.minimum(_point_segment_d2(q0x, q0y, p0x, p0y, p1x, p1y), _point_segment_d2(q1x, q1y, p0x, p0y, p1x, p1y)),
    )
    ux, uy = p1x - p0x, p1y - p0y
    vx, vy = q1x - q0x, q1y - q0y
    o1 = ux * (q0y - p0y) - uy * (q0x - p0x)
    o2 = ux * (q1y - p0y) - uy * (q1x - p0x)
    o3 = vx * (p0y - q0y) - vy * (p0x - q0x)
    o4 = vx * (p1y - q0y) - vy * (p1x - q0x)
    crossing = (o1 * o2 < 0) & (o3 * o4 < 0)
    return np.where(crossing, 0.0, d2)


class _Canvas:
    """Paddles placed so far in a batch of images: segment slots [B, S] and target-path ends [B, 4, 2]
    (start and end of target path 0, then of target path 1)."""

    def __init__(self, num_images: int, max_segments: int):
        shape = (num_images, max_segments)
        self.x0, self.y0, self.x1, self.y1 = (np.zeros(shape) for _ in range(4))
        self.nseg = np.zeros(num_images, dtype=np.int64)
        self.ends = np.zeros((num_images, 4, 2))

    def grow(self, rng: np.random.Generator, idx: np.ndarray, p: Params, *, target: int | None) -> np.ndarray:
        """Try to add one path to each image ``idx`` (target path 0/1, or a distractor for target=None).
        Returns a bool mask over idx: placed. A failed image keeps its earlier paths unchanged."""
        n = p.contour_length if target is not None else p.distractor_length
        num_discs = 4 if target is None else 2 * target  # ends of the target paths already drawn
        res = p.resolution
        lo, hi = p.border, res - 1 - p.border
        mlo, mhi = p.marker_radius + 0.5, res - 1 - p.marker_radius - 0.5  # a marker fits inside the image
        c2 = p.clearance**2
        disc2 = (p.clearance + p.marker_radius) ** 2  # a paddle vs a (possible) marker centre
        end2 = (p.clearance + 2 * p.marker_radius) ** 2  # a possible marker centre vs another one
        K = p.candidates
        placed = np.zeros(idx.size, dtype=bool)
        pending = np.arange(idx.size)
        for _attempt in range(p.path_attempts):
            if pending.size == 0:
                break
            img = idx[pending]
            start = self.nseg[img].copy()
            alive = np.arange(pending.size)  # positions into pending/img/start
            px = py = th = None
            for t in range(n):
                if alive.size == 0:
                    break
                a_img = img[alive]
                m = a_img.size
                if t == 0:
                    box_lo, box_hi = (mlo, mhi) if target is not None else (lo, hi)
                    sx = rng.uniform(box_lo, box_hi, (m, K))
                    sy = rng.uniform(box_lo, box_hi, (m, K))
                    ang = rng.uniform(0.0, 2 * np.pi, (m, K))
                else:
                    ang = th[:, None] + rng.uniform(-p.max_turn, p.max_turn, (m, K))
                    gap = rng.uniform(p.gap_min, p.gap_max, (m, K))
                    sx = px[:, None] + gap * np.cos(ang)
                    sy = py[:, None] + gap * np.sin(ang)
                ex = sx + p.paddle_length * np.cos(ang)
                ey = sy + p.paddle_length * np.sin(ang)
                last = t == n - 1
                if target is not None and last:
                    ok = (ex >= mlo) & (ex <= mhi) & (ey >= mlo) & (ey <= mhi)
                else:
                    ok = (ex >= lo) & (ex <= hi) & (ey >= lo) & (ey <= hi)
                if t > 0:  # the first paddle's start was drawn inside its box
                    ok &= (sx >= lo) & (sx <= hi) & (sy >= lo) & (sy <= hi)
                s_max = int(self.nseg[a_img].max())
                if s_max:
                    qx0 = self.x0[a_img, :s_max][:, None, :]
                    qy0 = self.y0[a_img, :s_max][:, None, :]
                    qx1 = self.x1[a_img, :s_max][:, None, :]
                    qy1 = self.y1[a_img, :s_max][:, None, :]
                    slot = np.arange(s_max)[None, :]
                    other = slot < start[alive][:, None]  # paddles of earlier paths
                    own = (slot >= start[alive][:, None]) & (slot < self.nseg[a_img][:, None] - 1)  # non-adjacent
                    d2 = _segment_segment_d2(sx[..., None], sy[..., None], ex[..., None], ey[..., None], qx0, qy0, qx1, qy1)
                    ok &= ~((d2 < c2) & (other | own)[:, None, :]).any(-1)
                    if target is not None and (t == 0 or last):  # room for a marker at this end of the path
                        mx, my = (sx, sy) if t == 0 else (ex, ey)
                        md2 = _point_segment_d2(mx[..., None], my[..., None], qx0, qy0, qx1, qy1)
                        ok &= ~((md2 < disc2) & other[:, None, :]).any(-1)
                        if t == 0 and last:
                            md2 = _point_segment_d2(ex[..., None], ey[..., None], qx0, qy0, qx1, qy1)
                            ok &= ~((md2 < disc2) & other[:, None, :]).any(-1)
                if num_discs:
                    cx = self.ends[a_img, :num_discs, 0][:, None, :]
                    cy = self.ends[a_img, :num_discs, 1][:, None, :]
                    dd2 = _point_segment_d2(cx, cy, sx[..., None], sy[..., None], ex[..., None], ey[..., None])
                    ok &= ~(dd2 < disc2).any(-1)
                    if target is not None and (t == 0 or last):
                        for mx, my, use in ((sx, sy, t == 0), (ex, ey, last)):
                            if use:
                                e2 = (mx[..., None] - cx) ** 2 + (my[..., None] - cy) ** 2
                                ok &= ~(e2 < end2).any(-1)
                has = ok.any(1)
                pick = ok.argmax(1)
                rows = np.flatnonzero(has)
                cols = pick[rows]
                k_img = a_img[rows]
                slots = self.nseg[k_img]
                self.x0[k_img, slots] = sx[rows, cols]
                self.y0[k_img, slots] = sy[rows, cols]
                self.x1[k_img, slots] = ex[rows, cols]
                self.y1[k_img, slots] = ey[rows, cols]
                self.nseg[k_img] += 1
                lost = alive[~has]
                self.nseg[img[lost]] = start[lost]  # roll back this attempt's paddles
                px, py, th = ex[rows, cols], ey[rows, cols], ang[rows, cols]
                alive = alive[has]
            done = pending[alive]
            placed[done] = True
            if target is not None and alive.size:
                d_img = img[alive]
                first, final = start[alive], self.nseg[d_img] - 1
                self.ends[d_img, 2 * target] = np.stack([self.x0[d_img, first], self.y0[d_img, first]], -1)
                self.ends[d_img, 2 * target + 1] = np.stack([self.x1[d_img, final], self.y1[d_img, final]], -1)
            keep = np.ones(pending.size, dtype=bool)
            keep[alive] = False
            pending = pending[keep]
        return placed


def _draw_geometry(rng: np.random.Generator, num: int, p: Params) -> _Canvas:
    """Two target paths and the distractors in each of ``num`` images; an image whose target paths do not fit
    is redrawn from scratch until every image has both."""
    max_segments = 2 * p.contour_length + p.num_distractors * p.distractor_length
    out = _Canvas(num, max_segments)
    todo = np.arange(num)
    for _round in range(100):
        if todo.size == 0:
            break
        canvas = _Canvas(todo.size, max_segments)
        ok = np.ones(todo.size, dtype=bool)
        for target in (0, 1):
            idx = np.flatnonzero(ok)
            ok[idx] = canvas.grow(rng, idx, p, target=target)
        idx = np.flatnonzero(ok)
        for _ in range(p.num_distractors):
            canvas.grow(rng, idx, p, target=None)
        dst = todo[ok]
        for name in ("x0", "y0", "x1", "y1", "nseg", "ends"):
            getattr(out, name)[dst] = getattr(canvas, name)[ok]
        todo = todo[~ok]
    if todo.size:
        raise RuntimeError(f"could not place the target paths in {todo.size} images: parameters {p} leave no room")
    return out


# --------------------------------------------------------------------------- rendering


def _blend(flat: np.ndarray, res: int, image: np.ndarray, ox: np.ndarray, oy: np.ndarray, size: int, coverage) -> None:
    """Max-blend anti-aliased shapes into ``flat`` (images [B*res*res], float32): shape j covers the patch of
    size x size pixels at integer origin (ox[j], oy[j]) of image ``image[j]``; ``coverage(gx, gy, sel)``
    gives the ink 0..1 at pixel centres gx [n, 1, size], gy [n, size, 1] for the shapes ``sel``."""
    chunk = max(1, 2_000_000 // (size * size))
    ar = np.arange(size)
    for lo in range(0, image.size, chunk):
        sel = slice(lo, lo + chunk)
        gx = (ox[sel, None] + ar)[:, None, :]
        gy = (oy[sel, None] + ar)[:, :, None]
        v = coverage(gx.astype(np.float64), gy.astype(np.float64), sel)
        inside = (gx >= 0) & (gx < res) & (gy >= 0) & (gy < res) & (v > 0)
        at = image[sel, None, None] * (res * res) + gy * res + gx
        np.maximum.at(flat, at[inside], v[inside].astype(np.float32))


def _render(canvas: _Canvas, markers: np.ndarray, p: Params) -> np.ndarray:
    """uint8 images [B, res, res]: the canvas's paddles and the marker discs centred at markers [B, 2, 2]."""
    res = p.resolution
    num = canvas.nseg.size
    flat = np.zeros(num * res * res, dtype=np.float32)
    # Paddles: ink = clip(half width + 0.5 - distance to the centre line, 0, 1), a one-pixel anti-aliased edge.
    b, s = np.nonzero(np.arange(canvas.x0.shape[1])[None, :] < canvas.nseg[:, None])
    ax, ay, bx, by = canvas.x0[b, s], canvas.y0[b, s], canvas.x1[b, s], canvas.y1[b, s]
    reach = p.paddle_width / 2 + 0.5
    size = int(math.ceil(p.paddle_length + 2 * reach)) + 2
    ox = np.floor(np.minimum(ax, bx) - reach).astype(np.int64)
    oy = np.floor(np.minimum(ay, by) - reach).astype(np.int64)

    def paddle(gx, gy, sel):
        d = np.sqrt(_point_segment_d2(gx, gy, ax[sel, None, None], ay[sel, None, None], bx[sel, None, None],
                                      by[sel, None, None]))
        return np.clip(reach - d, 0.0, 1.0)

    _blend(flat, res, b, ox, oy, size, paddle)
    # Markers: discs of marker_radius with the same anti-aliased edge.
    cx, cy = markers[:, :, 0].ravel(), markers[:, :, 1].ravel()
    mb = np.repeat(np.arange(num), markers.shape[1])
    mreach = p.marker_radius + 0.5
    msize = int(math.ceil(2 * mreach)) + 2
    mox = np.floor(cx - mreach).astype(np.int64)
    moy = np.floor(cy - mreach).astype(np.int64)

    def disc(gx, gy, sel):
        d = np.sqrt((gx - cx[sel, None, None]) ** 2 + (gy - cy[sel, None, None]) ** 2)
        return np.clip(mreach - d, 0.0, 1.0)

    _blend(flat, res, mb, mox, moy, msize, disc)
    return np.rint(flat * 255).astype(np.uint8).reshape(num, res, res)


# --------------------------------------------------------------------------- generation


def generate(
    num: int,
    *,
    resolution: int = 32,
    difficulty: str | int = "hard",
    seed: int | Sequence[int] = 0,
    params: Params | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``num`` Pathfinder images uint8 [num, resolution, resolution] and labels int32 [num] (1: the markers
    are joined by a path). Exactly num // 2 positives, in shuffled order. Deterministic for a seed (an int
    or a sequence of ints, e.g. (seed, folder))."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    p = params if params is not None else params_for(resolution, difficulty)
    rng = np.random.default_rng(seed)
    labels = np.zeros(num, dtype=np.int32)
    labels[: num // 2] = 1
    labels = rng.permutation(labels)
    canvas = _draw_geometry(rng, num, p)
    # Markers: both ends of one target path (positive) or one end of each target path (negative).
    which = rng.integers(0, 2, (num, 3))
    first = np.where(labels == 1, 2 * which[:, 0], which[:, 1])
    second = np.where(labels == 1, 2 * which[:, 0] + 1, 2 + which[:, 2])
    rows = np.arange(num)
    markers = np.stack([canvas.ends[rows, first], canvas.ends[rows, second]], axis=1)
    return _render(canvas, markers, p), labels
