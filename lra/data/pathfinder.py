"""Pathfinder and Path-X (Long Range Arena, Tay et al. 2021): our own generator, PNG release writer, loader, CLI.

The task comes from Linsley, Kim, Veerabadran, Windolf and Serre (2018), "Learning long-range spatial
dependencies with horizontal gated recurrent units" (NeurIPS): an image holds dashed curved paths ("snakes")
and two circular markers; the label says whether the markers sit on the two ends of the same path (1) or on
ends of two different paths (0). LRA feeds the pixels as a flat sequence of tokens 0..255: Pathfinder at
32x32 (length 1024), Path-X at 128x128 (length 16384), both at the "hard" contour length of 14 paddles.

The generator here is written from that published description (no code of the original is used):

* A path is a chain of paddles (short straight bars) separated by small gaps; each paddle turns by at most
  ``max_turn`` from the previous one (smooth curvature). Difficulty = contour length in paddles: easy 6,
  medium 9, hard 14.
* Every image holds two *spines*, paths of the full contour length whose two halves keep the clearance of
  two different paths from each other, plus distractor paths a third as long. One spine, chosen at random, is
  cut: its middle paddles (4 of 14) are taken out and each half goes on from the cut, away from the other
  half, as a path of its own (up to the contour length, as far as it finds room). The whole picture is drawn
  before the label is known; then the two markers go on both ends of the intact spine (positive, label 1) or
  of the cut one (negative, label 0: one marker on each of the two paths it became). The picture is the same
  in both classes (same ink, same pixel histogram), the marker pair is placed alike (the two spines come from
  one process), and near each marker, up to the cut, the path looks alike too: only following the path from
  a marker past the middle tells the classes apart (see ``_place_markers``; version 2 put the markers on one
  end of each of two paths, whose directions gave the label away).
* Different paths keep a clearance (centre line to centre line) well above the gaps inside a path, and the
  ends of the spines (where markers may go) are kept clear of other paths and of each other: the two
  markers are joined by ink, across gaps of one dark pixel at 32x32, exactly when they lie on the same path.
  A path is also kept clear of its own non-adjacent paddles.
* Placement is rejection sampling: per step ``candidates`` random continuations, the first valid one wins
  (continuations with free room straight ahead are preferred); a spine that gets stuck is redrawn, an image
  whose two spines do not fit is redrawn, a cut half's extension stops where it gets stuck, a distractor that
  does not fit is left out.
* All sizes are set for 32x32 and scale linearly with the resolution (64, 128 = Path-X, 256).
* Vectorised: all images of a folder grow their paths in lockstep (arrays over images x candidates x placed
  paddles, exact segment distances for the near pairs only); paddles and markers are rasterised on small
  pixel patches from their distance fields, with a one-pixel anti-aliased edge. Pixels are uint8: background
  0, ink up to 255.
* Seeded: folder ``k`` of a release is drawn from ``numpy.random.default_rng([seed, k])``, so the bytes
  written for a seed do not depend on the number of worker processes.

Release layout (the official ``lra_release/pathfinder{32,64,128,256}/`` has the same one, so the loader reads
both)::

    pathfinder{res}/curv_contour_length_{6|9|14}/imgs/<k>/sample_<i>.png
    pathfinder{res}/curv_contour_length_{6|9|14}/metadata/<k>.npy

A metadata file is, despite its name, a text file of lines ``imgs/<k> sample_<i>.png <i> <label>`` (the
official files carry more columns; the loader uses columns 0, 1 and 3). For easy, the loader falls back to
the folder name ``curv_baseline`` (the official release's) when ``curv_contour_length_6`` is absent. Reading
PNGs needs Pillow; writing them does not.

The train/val/test split is LRA's (``split_of``), so on the official release the members of each split are
those LRA trained and evaluated on, and our files are split by the same rule. LRA's tfds builder
(lra_benchmarks/data/pathfinder.py) stores a folder as the tfds split "easy" (contour length 6, folder
``curv_baseline``), "intermediate" (9) or "hard" (14), one example per metadata line with the key
``<column 0>_<column 1>_<n>``, n counting the lines of each metadata file from 1 (e.g.
``imgs/0_sample_0.png_1``); tensorflow-datasets stores a split sorted by ``int(md5(split name + key), 16)``;
LRA reads ``hard[:80%]``, ``hard[80%:90%]``, ``hard[90%:]`` (tfds rounds each boundary to
``int(round(pct * N / 100))``, N counting every entry) and only then drops empty images. Here likewise:
entries whose image is unreadable leave a gap in their split and move no other image. The hashing and the
rounding were checked against tensorflow-datasets 4.9.10 itself (core/hashing.py, core/splits.py; the Beam
writer keeps the same global order), and a tfds build made like LRA's gives each split the same images as this
loader on generated data in the release layout (tests/data/test_tfds.py); the real release was not compared.

Generate the LRA sizes with::

    python -m lra.data.pathfinder --out data --resolution 32 --difficulty hard --num 200000 --seed 0
    python -m lra.data.pathfinder --out data --resolution 128 --difficulty hard --num 200000 --seed 0
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import _common

log = logging.getLogger(__name__)

DIFFICULTIES = {"easy": 6, "medium": 9, "hard": 14}
RESOLUTIONS = (32, 64, 128, 256)
SPLITS = ("train", "val", "test")
# LRA's split, as its tfds builder and input pipeline make it (see split_of): the tfds split name of each
# contour length (lra_benchmarks/data/pathfinder.py: easy = curv_baseline, intermediate = curv_contour_length_9,
# hard = curv_contour_length_14), and the percent slices LRA reads of it (f"{level}[:80%]", "[80%:90%]", "[90%:]").
TFDS_SPLITS = {6: "easy", 9: "intermediate", 14: "hard"}
SPLIT_PERCENTS = {"train": (None, 80.0), "val": (80.0, 90.0), "test": (90.0, None)}
DEFAULTS = {"num": 200_000, "seed": 0, "per_folder": 1000}
GENERATOR_VERSION = 3   # 3: markers on an intact or a cut spine (2: on one path or two, pairs matched by distance)
CACHE_NAME = "decoded-cache.npz"
CACHE_FORMAT = 2  # 2: also the tfds keys of all metadata entries and the entry of each image
PROVENANCE_NAME = "generator.json"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """Generator parameters, lengths in pixels of the output resolution (see ``params_for``)."""

    resolution: int
    contour_length: int  # paddles per spine (the difficulty)
    paddle_length: float  # centre-line length of one paddle
    paddle_width: float  # stroke width
    gap_min: float  # gap between consecutive paddles of one path, end to start
    gap_max: float
    max_turn: float  # largest change of direction between consecutive paddles, radians
    marker_radius: float
    clearance: float  # least centre-line distance between paddles of different paths
    self_clearance: float  # least distance between non-adjacent paddles of one path
    distractor_length: int  # paddles per distractor path
    num_distractors: int  # distractor paths tried per image (one that does not fit is left out)
    candidates: int  # random continuations tried per step
    lookahead: float  # prefer continuations that could go on straight this far without hitting anything
    path_attempts: int  # tries to draw one path in an image before giving up
    border: float  # least distance of a paddle's centre line from the image edge


def contour_length_of(difficulty: str | int) -> int:
    """6, 9 or 14 for "easy", "medium", "hard" (the contour length itself is accepted too)."""
    if isinstance(difficulty, str) and difficulty in DIFFICULTIES:
        return DIFFICULTIES[difficulty]
    try:
        n = int(difficulty)
    except (TypeError, ValueError):
        n = None
    if n in DIFFICULTIES.values() and not isinstance(difficulty, bool | float):
        return n
    valid = ", ".join(f"{k} ({v})" for k, v in DIFFICULTIES.items())
    raise ValueError(f"unknown Pathfinder difficulty {difficulty!r}; valid: {valid}")


def params_for(resolution: int = 32, difficulty: str | int = "hard") -> Params:
    """The generator's sizes: chosen at 32x32 and scaled linearly with ``resolution``.

    At 32x32 a paddle is a bar 1.5 px long and 1 px wide, consecutive paddles are 1-1.5 px apart and turn by at
    most 45 degrees, markers have a radius of 1.5 px. The centre lines of different paths stay 4.25 px apart:
    the ink of a paddle (its one-pixel anti-aliased edge included) reaches at most sqrt(1 + 1/4) px from its
    centre line, so ink pixels of different paths are more than 2 px apart, while the gaps inside a path
    leave at most one dark pixel: joining ink pixels up to 2 px apart (resolution/16 px at other resolutions)
    recovers the paths, and the label."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unsupported Pathfinder resolution {resolution}; valid: {', '.join(map(str, RESOLUTIONS))}")
    n = contour_length_of(difficulty)
    s = resolution / 32
    distractor_length = max(2, n // 3)  # as in the original: a third of the contour length
    return Params(
        resolution=resolution,
        contour_length=n,
        paddle_length=1.5 * s,
        paddle_width=1.0 * s,
        gap_min=1.0 * s,
        gap_max=1.5 * s,
        max_turn=math.radians(45.0),
        marker_radius=1.5 * s,
        clearance=4.25 * s,
        self_clearance=2.0 * s,
        distractor_length=distractor_length,
        num_distractors=round(16 / distractor_length),  # about 16 distractor paddles when they fit
        candidates=16,
        lookahead=3.0 * s,
        path_attempts=10,
        border=max(1.0 * s, math.hypot(s / 2 + 0.5, 0.5)),  # no ink on the outermost pixels
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
    """The paddles placed so far in a batch of images, as segment slots [B, S] with the path each belongs to
    (``pid``: 0 and 1 the two spines, 2 the second half of the cut spine, 3 + j distractor j; -1 a paddle
    taken out by the cut; a path's paddles are consecutive slots, an extension's after its half's), the ends
    of the two spines [B, 4, 2] (start and end of spine 0, then of spine 1: the possible marker centres) and
    which spine is cut [B]."""

    FIELDS = ("x0", "y0", "x1", "y1", "pid", "nseg", "ends", "cut")   # the per-image arrays (first axis: image)

    def __init__(self, num_images: int, max_segments: int):
        shape = (num_images, max_segments)
        self.x0, self.y0, self.x1, self.y1 = (np.zeros(shape) for _ in range(4))
        self.pid = np.full(shape, -1, dtype=np.int64)
        self.nseg = np.zeros(num_images, dtype=np.int64)
        self.ends = np.zeros((num_images, 4, 2))
        self.cut = np.zeros(num_images, dtype=np.int64)

    # Near-pair culling: all paddles have the same length L, so two paddles whose midpoints are more than
    # d + L apart are more than d apart, and a point more than d + L/2 from a midpoint is more than d from
    # that paddle. Exact distances are computed for the few remaining pairs only.

    def _segments_closer(self, imgs, thr, sx, sy, ex, ey, length) -> np.ndarray:
        """bool [m, K]: candidate paddle (sx, sy)-(ex, ey) [m, K] of image imgs[i] lies closer than thr[i, j]
        to placed paddle j (thr [m, S], 0 = ignore the slot)."""
        n_slots = thr.shape[1]
        x0, y0 = self.x0[imgs, :n_slots], self.y0[imgs, :n_slots]
        x1, y1 = self.x1[imgs, :n_slots], self.y1[imgs, :n_slots]
        dmx = ((sx + ex) / 2)[..., None] - ((x0 + x1) / 2)[:, None, :]
        dmy = ((sy + ey) / 2)[..., None] - ((y0 + y1) / 2)[:, None, :]
        i, k, j = np.nonzero((thr[:, None, :] > 0) & (dmx * dmx + dmy * dmy < (thr[:, None, :] + length) ** 2))
        d2 = _segment_segment_d2(sx[i, k], sy[i, k], ex[i, k], ey[i, k], x0[i, j], y0[i, j], x1[i, j], y1[i, j])
        hit = d2 < thr[i, j] ** 2
        out = np.zeros(sx.shape, dtype=bool)
        out[i[hit], k[hit]] = True
        return out

    def _point_closer(self, imgs, thr, qx, qy, length) -> np.ndarray:
        """bool [m, K]: point (qx, qy) [m, K] lies closer than thr[i, j] to placed paddle j (0 = ignore)."""
        n_slots = thr.shape[1]
        x0, y0 = self.x0[imgs, :n_slots], self.y0[imgs, :n_slots]
        x1, y1 = self.x1[imgs, :n_slots], self.y1[imgs, :n_slots]
        dmx = qx[..., None] - ((x0 + x1) / 2)[:, None, :]
        dmy = qy[..., None] - ((y0 + y1) / 2)[:, None, :]
        i, k, j = np.nonzero((thr[:, None, :] > 0) & (dmx * dmx + dmy * dmy < (thr[:, None, :] + length / 2) ** 2))
        d2 = _point_segment_d2(qx[i, k], qy[i, k], x0[i, j], y0[i, j], x1[i, j], y1[i, j])
        hit = d2 < thr[i, j] ** 2
        out = np.zeros(qx.shape, dtype=bool)
        out[i[hit], k[hit]] = True
        return out

    def grow(self, rng: np.random.Generator, idx: np.ndarray, p: Params, *, n, pid, spine: int | None = None,
             origin=None, near=None, avoid=None, partial: bool = False) -> np.ndarray:
        """Try to add a path of ``n`` paddles (an int, or int [idx.size] with ``partial``) to each image in
        ``idx``; returns bool [idx.size]: placed. An image where it fails keeps its earlier paddles unchanged.

        pid: the path id of the new paddles (int or int [idx.size]). spine: 0 or 1 for a spine (its ends need
        room for a marker and are stored in ``ends``). origin: None (a random start) or (x, y, angle, slot),
        arrays [idx.size]: the path goes on from the point (x, y) heading ``angle``, its first paddle the
        neighbour of paddle ``slot`` of the same path (an extension of a cut spine's half). near: None or (lo,
        hi, step, end): from the path's ``step``-th new paddle on, its own paddles in slots lo..hi-1 ([idx.size]
        each) are kept at the clearance of another path, and its marker end beyond them (end: (x, y) arrays,
        or None for a spine's start) at a marker's room (so that the path can be cut between them and each
        part looks like another path to the other). For a spine, its last end keeps a marker's room from the
        paddles lo..hi-1 too. avoid: bool [4] or [idx.size, 4], the spine ends (possible marker centres) the
        new paddles keep a marker's room from. partial: a path that finds no valid next paddle stops there and
        keeps what it has (placed, possibly with no paddle at all) instead of being redrawn."""
        m_all = idx.size
        lengths = np.broadcast_to(np.asarray(n, dtype=np.int64), (m_all,))
        if not partial and lengths.size and (lengths != lengths[0]).any():
            raise ValueError("paths of several lengths are grown only with partial=True")
        n = int(lengths.max(initial=0))
        pid = np.broadcast_to(np.asarray(pid, dtype=np.int64), (m_all,))
        avoid = np.broadcast_to(np.zeros(4, bool) if avoid is None else np.asarray(avoid, bool), (m_all, 4))
        res, L, K = p.resolution, p.paddle_length, p.candidates
        lo, hi = p.border, res - 1 - p.border
        mlo, mhi = p.marker_radius + 0.5, res - 1 - p.marker_radius - 0.5  # a marker's ink inside the image
        disc = p.clearance + p.marker_radius  # a paddle vs a possible marker centre of another path
        ends_apart = p.clearance + 2 * p.marker_radius  # two possible marker centres
        target = spine is not None
        placed = np.zeros(m_all, dtype=bool)
        pending = np.arange(m_all)
        for _attempt in range(p.path_attempts):
            if pending.size == 0:
                break
            img = idx[pending]
            start = self.nseg[img].copy()
            alive = np.arange(pending.size)  # positions into pending / img / start
            if origin is None:
                px = py = th = None
            else:
                px, py, th = (np.asarray(v)[pending] for v in origin[:3])
            for t in range(n):
                done = lengths[pending[alive]] <= t   # shorter paths (partial only) end here
                if done.any():
                    placed[pending[alive[done]]] = True
                    alive = alive[~done]
                    if px is not None:
                        px, py, th = px[~done], py[~done], th[~done]
                if alive.size == 0:
                    break
                a_img, a_start, a_pend = img[alive], start[alive], pending[alive]
                m, last = a_img.size, t == n - 1
                if t == 0 and origin is None:
                    box_lo, box_hi = (mlo, mhi) if target else (lo, hi)
                    sx = rng.uniform(box_lo, box_hi, (m, K))
                    sy = rng.uniform(box_lo, box_hi, (m, K))
                    ang = rng.uniform(0.0, 2 * np.pi, (m, K))
                else:
                    ang = th[:, None] + rng.uniform(-p.max_turn, p.max_turn, (m, K))
                    gap = rng.uniform(p.gap_min, p.gap_max, (m, K))
                    sx = px[:, None] + gap * np.cos(ang)
                    sy = py[:, None] + gap * np.sin(ang)
                ex = sx + L * np.cos(ang)
                ey = sy + L * np.sin(ang)
                e_lo, e_hi = (mlo, mhi) if target and last else (lo, hi)
                ok = (ex >= e_lo) & (ex <= e_hi) & (ey >= e_lo) & (ey <= e_hi)
                ok &= (sx >= lo) & (sx <= hi) & (sy >= lo) & (sy <= hi)
                nseg = self.nseg[a_img]
                n_slots = int(nseg.max())
                slot = np.arange(n_slots)[None, :]
                spid, mine = self.pid[a_img, :n_slots], pid[a_pend][:, None]
                drawn = (slot < nseg[:, None]) & (spid >= 0)
                other = drawn & (spid != mine)  # paddles of the other paths
                adjacent = nseg - 1 if t > 0 or origin is None else np.asarray(origin[3])[a_pend]
                own = drawn & (spid == mine) & (slot != adjacent[:, None])  # own paddles but the neighbour
                if near is not None and t >= near[2]:
                    in_near = own & (slot >= near[0][a_pend, None]) & (slot < near[1][a_pend, None])
                    if near[3] is None:
                        nx, ny = self.x0[a_img, a_start], self.y0[a_img, a_start]
                    else:
                        nx, ny = near[3][0][a_pend], near[3][1][a_pend]
                    d2 = _point_segment_d2(nx[:, None], ny[:, None], sx, sy, ex, ey)
                    ok &= d2 >= disc**2
                else:
                    in_near = np.zeros_like(own)
                thr = np.where(other | in_near, p.clearance, np.where(own, p.self_clearance, 0.0))
                ok &= ~self._segments_closer(a_img, thr, sx, sy, ex, ey, L)
                if target and (t == 0 or last):
                    # Room for a marker at this end: clear of other paths, and of its own path beyond the
                    # two neighbouring paddles (a marker should not sit on the middle of its own path).
                    own_far = own & (slot < nseg[:, None] - 2)
                    mthr = np.where(other | in_near, disc, np.where(own_far, p.self_clearance + p.marker_radius, 0.0))
                    if t == 0:
                        ok &= ~self._point_closer(a_img, mthr, sx, sy, L)
                    if last:
                        ok &= ~self._point_closer(a_img, mthr, ex, ey, L)
                a_avoid = avoid[a_pend]
                if a_avoid.any():  # away from the spine ends drawn before (possible markers)
                    cx = self.ends[a_img, :, 0][:, None, :]
                    cy = self.ends[a_img, :, 1][:, None, :]
                    d2 = _point_segment_d2(cx, cy, sx[..., None], sy[..., None], ex[..., None], ey[..., None])
                    ok &= ((d2 >= disc**2) | ~a_avoid[:, None, :]).all(-1)
                    if target and (t == 0 or last):
                        mx, my = (sx, sy) if t == 0 else (ex, ey)
                        apart = (mx[..., None] - cx) ** 2 + (my[..., None] - cy) ** 2 >= ends_apart**2
                        ok &= (apart | ~a_avoid[:, None, :]).all(-1)
                if target and last and t > 0:
                    # The two ends of one path lie as far apart as ends of two paths must (no size cue).
                    fx, fy = self.x0[a_img, a_start][:, None], self.y0[a_img, a_start][:, None]
                    ok &= (ex - fx) ** 2 + (ey - fy) ** 2 >= ends_apart**2
                has = ok.any(1)
                if not last and p.lookahead > 0:
                    # Prefer continuations with free room straight ahead: a path that runs head-on into the
                    # border or another path finds no valid next paddle and has to be redrawn.
                    qx = ex + p.lookahead * np.cos(ang)
                    qy = ey + p.lookahead * np.sin(ang)
                    room = ok & (qx >= lo) & (qx <= hi) & (qy >= lo) & (qy <= hi)
                    room &= ~self._point_closer(a_img, thr, qx, qy, L)
                    ok = np.where(room.any(1, keepdims=True), room, ok)
                rows = np.flatnonzero(has)
                cols = ok.argmax(1)[rows]  # the first valid (preferred) candidate: a uniform draw among them
                k_img = a_img[rows]
                slots = self.nseg[k_img]
                self.x0[k_img, slots] = sx[rows, cols]
                self.y0[k_img, slots] = sy[rows, cols]
                self.x1[k_img, slots] = ex[rows, cols]
                self.y1[k_img, slots] = ey[rows, cols]
                self.pid[k_img, slots] = pid[a_pend[rows]]
                self.nseg[k_img] += 1
                lost = alive[~has]
                if partial:
                    placed[pending[lost]] = True
                else:
                    self.nseg[img[lost]] = start[lost]  # roll back this attempt's paddles
                px, py, th = ex[rows, cols], ey[rows, cols], ang[rows, cols]
                alive = alive[has]
            placed[pending[alive]] = True
            if target and alive.size:
                d_img = img[alive]
                first, final = start[alive], self.nseg[d_img] - 1
                self.ends[d_img, 2 * spine] = np.stack([self.x0[d_img, first], self.y0[d_img, first]], -1)
                self.ends[d_img, 2 * spine + 1] = np.stack([self.x1[d_img, final], self.y1[d_img, final]], -1)
            if partial:
                break
            failed = np.ones(pending.size, dtype=bool)
            failed[alive] = False
            pending = pending[failed]
        return placed


def _cut_of(n: int) -> tuple[int, int]:
    """(first, count): the middle paddles that the cut takes out of a spine of ``n`` paddles (4 of 14, 2 of 9
    and of 6): room for both halves to turn away from each other."""
    count = max(2, 2 * n // 7)
    return (n - count) // 2, count


def _draw_geometry(rng: np.random.Generator, num: int, p: Params) -> _Canvas:
    """Two spines, one of them cut and its halves extended into paths of their own, and the distractors, in
    each of ``num`` images. An image whose two spines do not fit is redrawn from scratch.

    A spine is a path of ``contour_length`` paddles whose two halves keep the clearance of two paths from each
    other beyond its middle paddles (``_cut_of``), and its far half a marker's room from its start: both
    spines are drawn so, before it is decided which is cut. The cut takes the middle paddles out of one spine
    (chosen at random); each half then goes on from its cut end for at most as many paddles as make it a path
    of ``contour_length``, as far as it finds room, by the rules of a spine (its new paddles beyond as many as
    the cut took out keep a path's clearance from its half and a marker's room from its marker, as an intact
    spine's far half does). The picture is the same whichever spine carries the markers: the intact one
    (positive) or the cut one (negative, one marker on each half)."""
    n = p.contour_length
    c, r = _cut_of(n)
    max_segments = 3 * n + r + p.num_distractors * p.distractor_length
    out = _Canvas(num, max_segments)
    todo = np.arange(num)
    for _round in range(200):
        if todo.size == 0:
            break
        canvas = _Canvas(todo.size, max_segments)
        ok = np.ones(todo.size, dtype=bool)
        for spine in (0, 1):
            idx = np.flatnonzero(ok)
            start = canvas.nseg[idx]
            near = (start, start + c, c + r, None)
            ok[idx] = canvas.grow(rng, idx, p, n=n, pid=spine, spine=spine, near=near, avoid=np.arange(4) < 2 * spine)
        idx = np.flatnonzero(ok)
        s = rng.integers(2, size=idx.size)
        canvas.cut[idx] = s
        base = s * n   # spine s fills slots s*n .. s*n + n - 1
        second = np.arange(n)[None, :] >= c + r
        canvas.pid[idx[:, None], base[:, None] + np.arange(n)] = np.where(second, 2, s[:, None])
        canvas.pid[idx[:, None], base[:, None] + c + np.arange(r)] = -1
        # The first half goes on from its last paddle, the second backwards from its first; each as far as
        # it finds room (an extension is never redrawn, so whether a spine is cut does not depend on its room),
        # the half that goes first chosen at random.
        first = rng.integers(2, size=idx.size)
        for turn in (0, 1):
            half = first ^ turn
            slot = np.where(half == 0, base + c - 1, base + c + r)
            x0, y0, x1, y1 = (getattr(canvas, name)[idx, slot] for name in ("x0", "y0", "x1", "y1"))
            forward = half == 0   # the first half heads on from its end, the second back from its start
            origin = (np.where(forward, x1, x0), np.where(forward, y1, y0),
                      np.where(forward, np.arctan2(y1 - y0, x1 - x0), np.arctan2(y0 - y1, x0 - x1)), slot)
            own_end = 2 * s + half
            marker = canvas.ends[idx, own_end]
            near = (np.where(forward, base, base + c + r), np.where(forward, base + c, base + n), r,
                    (marker[:, 0], marker[:, 1]))
            canvas.grow(rng, idx, p, n=np.where(forward, n - c, c + r), pid=np.where(forward, s, 2), origin=origin,
                        near=near, avoid=np.arange(4)[None, :] != own_end[:, None], partial=True)
        for j in range(p.num_distractors):   # an extension never fails: idx still holds the images with both spines
            canvas.grow(rng, idx, p, n=p.distractor_length, pid=3 + j, avoid=np.ones(4, bool))
        dst = todo[ok]
        for name in _Canvas.FIELDS:
            getattr(out, name)[dst] = getattr(canvas, name)[ok]
        todo = todo[~ok]
    if todo.size:
        raise RuntimeError(f"could not fit the two spines into {todo.size} images; parameters: {p}")
    return out


# --------------------------------------------------------------------------- rendering


def _blend(flat: np.ndarray, res: int, image: np.ndarray, ox: np.ndarray, oy: np.ndarray, size: int, coverage) -> None:
    """Max-blend shapes into ``flat`` (float32 images [B*res*res]): shape j covers the size x size pixel patch
    at integer origin (ox[j], oy[j]) of image ``image[j]``; ``coverage(gx, gy, sel)`` gives the ink 0..1 at
    the pixel centres gx [n, 1, size], gy [n, size, 1] of the shapes ``sel``. Patches keep the cost
    proportional to the ink, not to the image area."""
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
    # Paddles: bars of paddle_width x paddle_length with a one-pixel linear anti-aliased edge.
    b, s = np.nonzero((np.arange(canvas.x0.shape[1])[None, :] < canvas.nseg[:, None]) & (canvas.pid >= 0))
    ax, ay, bx, by = canvas.x0[b, s], canvas.y0[b, s], canvas.x1[b, s], canvas.y1[b, s]
    reach = p.paddle_width / 2 + 0.5
    size = int(math.ceil(p.paddle_length + 2 * reach)) + 2
    ox = np.floor(np.minimum(ax, bx) - reach).astype(np.int64)
    oy = np.floor(np.minimum(ay, by) - reach).astype(np.int64)
    length = np.maximum(np.hypot(bx - ax, by - ay), 1e-12)
    ux, uy = (bx - ax) / length, (by - ay) / length

    def paddle(gx, gy, sel):
        # A bar with flat ends: coverage across (stroke width) times coverage along (paddle length).
        rx, ry = gx - ax[sel, None, None], gy - ay[sel, None, None]
        along = rx * ux[sel, None, None] + ry * uy[sel, None, None]
        across = np.abs(rx * uy[sel, None, None] - ry * ux[sel, None, None])
        inside = np.minimum(along, length[sel, None, None] - along)
        return np.clip(reach - across, 0.0, 1.0) * np.clip(inside + 0.5, 0.0, 1.0)

    _blend(flat, res, b, ox, oy, size, paddle)
    # Markers: discs of marker_radius with the same edge.
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
    return_markers: bool = False,
    positives: int | None = None,
) -> tuple[np.ndarray, ...]:
    """``num`` Pathfinder images uint8 [num, resolution, resolution] and labels int32 [num] (1: the markers
    are joined by a path). Exactly ``positives`` (default num // 2) positives, in shuffled order. Deterministic
    for a seed (an int or a sequence of ints, e.g. (seed, folder)). With ``return_markers`` also the marker
    centres float [num, 2, 2] as (x, y) = (column, row) in pixel units."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    positives = num // 2 if positives is None else positives
    if not 0 <= positives <= num:
        raise ValueError(f"positives must be in [0, num={num}], got {positives}")
    p = params if params is not None else params_for(resolution, difficulty)
    rng = np.random.default_rng(seed)
    canvas, labels, markers = _place_markers(rng, num, p, positives)
    images = _render(canvas, markers, p)
    return (images, labels, markers) if return_markers else (images, labels)


def _place_markers(rng: np.random.Generator, num: int, p: Params, n_pos: int
                   ) -> tuple[_Canvas, np.ndarray, np.ndarray]:
    """The images' geometry, labels (exactly n_pos positives, shuffled) and marker centres [num, 2, 2].

    Markers go on both ends of the intact spine (positive) or of the cut one (negative: one marker on each of
    the two paths it became), see ``_draw_geometry``. The picture does not depend on the label, the marked
    spine is spine 0 or 1 at random in either class, and the two halves of a spine look alike near its ends
    whether it is cut or not: the class shows only in following the path from a marker past the middle.

    Version 2 drew two target paths and put the markers on the ends of one (positive) or on one end of each
    (negative): a path's end points along the path towards its other end, so the direction in which the ink
    leaves each marker, read against the other marker, gave the label away to a classifier that traced
    nothing (79% of held-out hard labels); it also had to match the marker pairs' distances between the
    classes, which here are distributed alike by construction."""
    canvas = _draw_geometry(rng, num, p)
    labels = rng.permutation(np.arange(num) < n_pos).astype(np.int32)
    markers = _marker_options(canvas)[np.arange(num), labels]
    return canvas, labels, markers


def _marker_options(canvas: _Canvas) -> np.ndarray:
    """The marker centres [B, 2 labels, 2, (x, y)] an image offers: label 0 on the ends of the cut spine, label
    1 on those of the intact one."""
    spine = np.stack([canvas.cut, 1 - canvas.cut], 1)                      # [B, 2 labels]
    ends = canvas.ends.reshape(-1, 2, 2, 2)                                # [B, spine, 2 ends, (x, y)]
    return ends[np.arange(spine.shape[0])[:, None], spine]


# --------------------------------------------------------------------------- PNG files


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of uint8 [H, W] (no row filter, zlib level 6): deterministic bytes."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 2:
        raise ValueError(f"encode_png expects a 2-D uint8 array, got shape {image.shape}")
    h, w = image.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)  # each row starts with its filter type, 0 = none
    raw[:, 1:] = image

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # bit depth 8, grayscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def read_png(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W] grayscale pixels of any PNG (any bit depth, colour type or row filter; colour images are
    converted to luminance). Raises on an unreadable file. Needs Pillow."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8).copy()


# --------------------------------------------------------------------------- release layout and writer


def difficulty_name(difficulty: str | int) -> str:
    n = contour_length_of(difficulty)
    return next(k for k, v in DIFFICULTIES.items() if v == n)


def release_dir(root: str | os.PathLike, resolution: int = 32, difficulty: str | int = "hard") -> Path:
    """``root/pathfinder{res}/curv_contour_length_{n}``; for easy (6) the official name ``curv_baseline`` when
    only that one exists."""
    n = contour_length_of(difficulty)
    base = Path(root) / f"pathfinder{resolution}"
    folder = base / f"curv_contour_length_{n}"
    if n == DIFFICULTIES["easy"] and not folder.exists() and (base / "curv_baseline").exists():
        return base / "curv_baseline"
    return folder


def folder_sizes(num: int, per_folder: int) -> list[int]:
    """Images per folder: per_folder each, the last one partial."""
    if per_folder < 1:
        raise ValueError(f"per_folder must be >= 1, got {per_folder}")
    return [min(per_folder, num - k * per_folder) for k in range(-(-num // per_folder))]


def folder_positives(sizes: list[int]) -> list[int]:
    """Positives per folder, num // 2 in all: half of each folder, and of the folders with an odd size every
    second one gets the odd image as a positive (per_folder=1 or 3 used to give no or a third of positives)."""
    out, odd = [], 0
    for count in sizes:
        out.append(count // 2 + (odd % 2 if count % 2 else 0))
        odd += count % 2
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    with _common.atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_folder(folder: str | os.PathLike, k: int, count: int, *, params: Params, seed: int,
                 positives: int | None = None) -> int:
    """Generate folder ``k`` of a release (seeded from (seed, k)): ``imgs/<k>/sample_<i>.png`` for i < count
    and the text file ``metadata/<k>.npy``, ``positives`` of them positive (default count // 2). Returns the
    number of positives."""
    folder = Path(folder)
    images, labels = generate(count, params=params, seed=(seed, k), positives=positives)
    img_dir = folder / "imgs" / str(k)
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, label) in enumerate(zip(images, labels)):
        (img_dir / f"sample_{i}.png").write_bytes(encode_png(image))
        lines.append(f"imgs/{k} sample_{i}.png {i} {int(label)}\n")
    meta_dir = folder / "metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(meta_dir / f"{k}.npy", "".join(lines).encode("ascii"))
    return int(labels.sum())


def _write_folder_task(args) -> tuple[int, int, int]:
    folder, k, count, params, seed, positives = args
    return k, count, write_folder(folder, k, count, params=params, seed=seed, positives=positives)


def write_release(
    folder: str | os.PathLike,
    num: int,
    *,
    resolution: int = 32,
    difficulty: str | int = "hard",
    seed: int = 0,
    per_folder: int = DEFAULTS["per_folder"],
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """Write ``num`` images in the release layout directly into ``folder`` (the ``curv_contour_length_*``
    level), then ``generator.json`` (the parameters; its presence marks a complete folder). Folder k is
    seeded from (seed, k), so the bytes do not depend on ``workers`` (processes, one folder at a time).
    Returns the provenance record."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    folder = Path(folder)
    p = params_for(resolution, difficulty)
    sizes = folder_sizes(num, per_folder)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    tasks = [(str(folder), k, count, p, seed, pos)
             for k, (count, pos) in enumerate(zip(sizes, folder_positives(sizes)))]
    done = positives = 0
    next_report = time.monotonic() + 10.0

    def report(count: int, pos: int) -> None:
        nonlocal done, positives, next_report
        done += count
        positives += pos
        if progress and time.monotonic() > next_report:
            print(f"  wrote {done}/{num} images", file=sys.stderr, flush=True)
            next_report = time.monotonic() + 10.0

    if workers <= 1 or len(tasks) == 1:
        for task in tasks:
            _, count, pos = _write_folder_task(task)
            report(count, pos)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may hold threads (jax) that a fork would copy in a broken state.
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx)
        try:
            for _, count, pos in pool.map(_write_folder_task, tasks):
                report(count, pos)
        except BaseException:   # Ctrl-C, SIGTERM, a failed folder: the queued folders are not started
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    record = {
        "generator": "lra.data.pathfinder",
        "version": GENERATOR_VERSION,
        "resolution": resolution,
        "difficulty": difficulty_name(difficulty),
        "contour_length": p.contour_length,
        "num": num,
        "positives": positives,
        "seed": seed,
        "per_folder": per_folder,
        "params": asdict(p),
    }
    _atomic_write(folder / PROVENANCE_NAME, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return record


def _is_ours(folder: Path) -> bool:
    return (folder / PROVENANCE_NAME).is_file()


def _tmp_prefix(folder: Path) -> str:
    return f".{folder.name}.tmp-{socket.gethostname()}-"


def _remove_abandoned(folder: Path) -> None:
    """Remove the temporary folders of generations on this host whose process is gone (killed with SIGKILL, or
    the machine stopped): ``.<name>.tmp-<host>-<pid>-*`` beside ``folder``. Those of live processes stay."""
    prefix = _tmp_prefix(folder)
    for tmp in folder.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing %s, left by generation process %s which is gone", tmp, pid)
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:   # alive, another user's
            pass


def generate_release(
    folder: str | os.PathLike,
    num: int,
    *,
    resolution: int = 32,
    difficulty: str | int = "hard",
    seed: int = 0,
    per_folder: int = DEFAULTS["per_folder"],
    workers: int = 1,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """write_release into a temporary sibling folder renamed into place, so an interrupted run never leaves a
    half data set behind. An existing folder written by this generator is replaced; any other existing
    folder (e.g. the official release) only with ``force``."""
    folder = Path(folder)
    if num < 1:   # before any folder is created
        raise ValueError(f"num must be >= 1, got {num}")
    folder_sizes(num, per_folder)   # per_folder >= 1
    if folder.exists() and not _is_ours(folder) and not force:
        raise FileExistsError(
            f"{folder} exists and was not written by this generator (no {PROVENANCE_NAME}); remove it, choose "
            f"another --out, or pass --force to replace it"
        )
    _common.check_writable(folder.parent, "choose another --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{_tmp_prefix(folder)}{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        record = write_release(
            tmp,
            num,
            resolution=resolution,
            difficulty=difficulty,
            seed=seed,
            per_folder=per_folder,
            workers=workers,
            progress=progress,
        )
        if folder.exists():
            stale = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.stale-"))
            os.replace(folder, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def generated_dir(data_dir, *, resolution: int, difficulty: str | int, num: int, seed: int, per_folder: int) -> Path:
    """Cache folder of a generated data set; its path names every generation parameter."""
    name = f"generated-v{GENERATOR_VERSION}-n{num}-seed{seed}-per{per_folder}"
    return Path(data_dir) / f"pathfinder{resolution}" / name / f"curv_contour_length_{contour_length_of(difficulty)}"


def generate_options(generate) -> dict:
    """``task.data.generate`` checked before anything is generated: a mapping of ensure_generated's own options
    (num, seed, per_folder, workers), each an integer in range; ValueError naming the key otherwise."""
    valid = {"num": 1, "seed": 0, "per_folder": 1, "workers": 1}   # name: the least value
    if not isinstance(generate, dict):
        raise ValueError(f"task.data.generate must be a mapping of {', '.join(valid)} (e.g. {{num: 2000, seed: 0}}) "
                         f"or null (read the release files), got {generate!r}")
    unknown = [k for k in generate if k not in valid]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(f'task.data.generate.{k}' for k in unknown)} for Pathfinder "
                         f"generation (a typo, or a key added with '+' that nothing reads); valid: "
                         f"{', '.join(f'task.data.generate.{k}' for k in valid)}")
    for key, value in generate.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < valid[key]:
            raise ValueError(f"task.data.generate.{key} must be an integer >= {valid[key]}, got {value!r}")
    return dict(generate)


def ensure_generated(
    data_dir,
    *,
    resolution: int = 32,
    difficulty: str | int = "hard",
    num: int = DEFAULTS["num"],
    seed: int = DEFAULTS["seed"],
    per_folder: int = DEFAULTS["per_folder"],
    workers: int = 1,
) -> Path:
    """Folder holding a generated data set in the release layout; generates it on the first call
    (into a temporary sibling folder renamed into place)."""
    folder = generated_dir(
        data_dir, resolution=resolution, difficulty=difficulty, num=num, seed=seed, per_folder=per_folder
    )
    if _is_ours(folder):
        return folder
    t0 = time.monotonic()
    try:
        generate_release(
            folder,
            num,
            resolution=resolution,
            difficulty=difficulty,
            seed=seed,
            per_folder=per_folder,
            workers=workers,
            force=True,
        )
    except OSError:
        if _is_ours(folder):  # lost a rename race against a concurrent generation of the same data
            return folder
        raise
    dt = time.monotonic() - t0
    log.info(
        "generated %d Pathfinder images (%dx%d, contour length %d, seed %d) in %.1fs (%.0f images/s) into %s",
        num,
        resolution,
        resolution,
        contour_length_of(difficulty),
        seed,
        dt,
        num / max(dt, 1e-9),
        folder,
    )
    return folder


# --------------------------------------------------------------------------- reading a release


_NPY_MAGIC = b"\x93NUMPY"


def _natural_key(text: str) -> tuple:
    """'sample_10.png' after 'sample_9.png': digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _metadata_entries(folder: str | os.PathLike) -> list[tuple[str, str, int, str]]:
    """(image folder, file name, label, tfds key) of every metadata entry, sorted by (folder, file); see
    read_metadata. The key is the one LRA's tfds builder gives the entry (see tfds_key): columns 0 and 1 and
    the 1-based number of the line in its metadata file."""
    meta_dir = Path(folder) / "metadata"
    if not meta_dir.is_dir():
        raise FileNotFoundError(f"Pathfinder metadata folder not found: {meta_dir}")
    rows: list[tuple[str, str, int, str]] = []
    for path in sorted(meta_dir.glob("*.npy"), key=lambda q: _natural_key(q.name)):
        data = path.read_bytes()
        if data.startswith(_NPY_MAGIC):
            table = np.load(io.BytesIO(data), allow_pickle=False)
            lines = [" ".join(c.decode("utf-8", errors="replace") if isinstance(c, bytes) else str(c)
                              for c in np.atleast_1d(row).tolist()) for row in np.atleast_2d(table)]
        else:
            # LRA's builder: text.split('\n')[:-1], i.e. lines counted at '\n' only, and a last line without a
            # final '\n' is not an example of its data set; it is left out here too.
            lines = data.decode("utf-8", errors="replace").split("\n")
            last = lines.pop()
            if last.strip():
                log.warning(
                    "%s: the last line has no final newline; LRA's tfds builder drops it, and so does this loader: %r",
                    path,
                    last[:120],
                )
        for lineno, line in enumerate(lines, start=1):
            cols = line.split()
            if not cols:
                continue

            def bad(what: str, lineno=lineno, line=line, path=path) -> ValueError:
                return ValueError(f"{path}:{lineno}: malformed Pathfinder metadata line ({what}): {line[:120]!r}")

            if len(cols) < 4:
                raise bad(
                    f"expected at least 4 space-separated columns (image folder, file, unused, label), got {len(cols)}"
                )
            try:
                label = int(cols[3])
            except ValueError:
                try:
                    value = float(cols[3])
                except ValueError:
                    raise bad(f"label {cols[3]!r} is not a number") from None
                if not value.is_integer():
                    raise bad(f"label {cols[3]!r} is not 0 or 1") from None
                label = int(value)
            if label not in (0, 1):
                raise bad(f"label {label} is not 0 or 1")
            rows.append((cols[0], cols[1], label, tfds_key(cols[0], cols[1], lineno)))
    rows.sort(key=lambda r: (_natural_key(r[0]), _natural_key(r[1])))
    return rows


def read_metadata(folder: str | os.PathLike) -> list[tuple[str, str, int]]:
    """(image folder, file name, label) of every line of ``folder/metadata/*.npy``, sorted by (folder, file).

    A metadata file is a text file of space-separated lines ``imgs/<k> sample_<i>.png <unused> <label> ...``
    (columns 0, 1 and 3 are used; a binary NumPy string array with the same columns is accepted too). Lines end
    at '\\n' (as in LRA's builder, a last line without one is dropped, with a warning). Empty lines are skipped;
    a line with fewer than 4 columns or a label other than 0/1 raises ValueError naming the file and its
    1-based line number."""
    return [row[:3] for row in _metadata_entries(folder)]


def _fingerprint(folder: Path, resolution: int) -> str:
    """Changes whenever a metadata file is added, removed or rewritten, and when an image folder changes (a file
    added, removed, or replaced through a rename, as downloaders and ``cp`` to a new file do). An image rewritten
    in place leaves its folder as it was: delete the cache file then. A few hundred stat calls, not one per
    image."""
    h = hashlib.sha256(f"pathfinder-cache-{CACHE_FORMAT}-{resolution}".encode())
    for path in sorted((folder / "metadata").glob("*.npy")):
        st = path.stat()
        h.update(f"\n{path.name} {st.st_size} {st.st_mtime_ns}".encode())
    images = folder / "imgs"
    for path in sorted(images.iterdir()) if images.is_dir() else ():
        if path.is_dir():
            h.update(f"\nimgs/{path.name} {path.stat().st_mtime_ns}".encode())
    return h.hexdigest()


def _decode_all(folder: Path, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Decode every image the metadata lists: uint8 images [M, res, res] and uint8 labels [M] of the M
    readable ones in (folder, file) order, int32 [M] their entries (indices into the N metadata entries in
    (folder, file) order), bytes [N] the tfds keys of all N entries, and the paths (relative to folder) of
    the skipped ones."""
    rows = _metadata_entries(folder)
    images = np.zeros((len(rows), resolution, resolution), dtype=np.uint8)
    keep = np.zeros(len(rows), dtype=bool)
    skipped: list[str] = []
    reasons: list[str] = []
    t0 = time.monotonic()
    for j, (sub, name, _, _) in enumerate(rows):
        rel = f"{sub}/{name}"
        try:
            pixels = read_png(folder / sub / name)
        except Exception as e:  # an empty, truncated or missing PNG is skipped, never fatal
            skipped.append(rel)
            reasons.append(f"{rel}: {type(e).__name__}: {e}")
            continue
        if pixels.shape != (resolution, resolution):
            skipped.append(rel)
            reasons.append(f"{rel}: size {pixels.shape[1]}x{pixels.shape[0]}, expected {resolution}x{resolution}")
            continue
        images[j] = pixels
        keep[j] = True
    labels = np.fromiter((r[2] for r in rows), dtype=np.uint8, count=len(rows))
    keys = np.array([r[3].encode("utf-8") for r in rows], dtype=bytes)
    if skipped:
        log.warning(
            "skipped %d unreadable Pathfinder image(s) of %d in %s, e.g. %s",
            len(skipped),
            len(rows),
            folder,
            "; ".join(reasons[:3]),
        )
    log.info("decoded %d Pathfinder images from %s in %.1fs", int(keep.sum()), folder, time.monotonic() - t0)
    if not keep.any():
        raise ValueError(
            f"no readable {resolution}x{resolution} Pathfinder images in {folder} "
            f"({len(rows)} listed){': ' + '; '.join(reasons[:3]) if reasons else ''}"
        )
    return images[keep], labels[keep], np.flatnonzero(keep).astype(np.int32), keys, skipped


def _read_release(folder: Path, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """read_release's arrays plus int32 [M] the entry of each image and bytes [N] the tfds keys of all
    metadata entries (unreadable images included), from the cache when it is current."""
    cache = folder / CACHE_NAME
    fingerprint = _fingerprint(folder, resolution)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["fingerprint"]) == fingerprint:
                    images, labels, entry, keys = z["images"], z["labels"], z["entry"], z["keys"]
                    n_skipped = int(z["skipped"])
                    if n_skipped:
                        log.info("%s: %d unreadable image(s) were skipped when the cache was built", folder, n_skipped)
                    return images, labels.astype(np.int32), entry, keys
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable Pathfinder cache %s (%s)", cache, e)
    images, labels, entry, keys, skipped = _decode_all(folder, resolution)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{CACHE_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    images=images,
                    labels=labels,
                    entry=entry,
                    keys=keys,
                    fingerprint=np.array(fingerprint),
                    skipped=np.array(len(skipped)),
                    skipped_files=np.array(skipped, dtype=str),
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, cache)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    except OSError as e:
        log.warning("could not write the Pathfinder cache %s (%s); decoding again next time", cache, e)
    return images, labels.astype(np.int32), entry, keys


def read_release(folder: str | os.PathLike, resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, res, res] and int32 labels [N] of every readable image of a release folder (the
    ``curv_contour_length_*`` level), in (folder, file) order. Unreadable images are skipped and counted in
    one log warning. The decoded arrays (and the tfds keys of the metadata entries, for split_of) are cached
    in ``folder/decoded-cache.npz`` (written atomically) and reused while the metadata files and the image
    folders are unchanged (see _fingerprint); a read-only folder is decoded every time."""
    images, labels, _, _ = _read_release(Path(folder), resolution)
    return images, labels


# --------------------------------------------------------------------------- LRA's split


def tfds_split_name(difficulty: str | int) -> str:
    """The split of LRA's tfds builder that holds a difficulty: "easy" (contour length 6, folder
    curv_baseline), "intermediate" (9) or "hard" (14); it salts tfds's hash (tfds_order). Other contour
    lengths have no LRA split and raise ValueError (as contour_length_of does)."""
    return TFDS_SPLITS[contour_length_of(difficulty)]


def tfds_key(image_folder: str, file_name: str, line_number: int) -> str:
    """The key LRA's tfds builder gives a metadata line: ``'_'.join([cols[0], cols[1], str(example_id)])``
    where example_id counts the lines of one metadata file from 1, e.g. ``imgs/0_sample_0.png_1``."""
    return f"{image_folder}_{file_name}_{line_number}"


def tfds_order(keys: Sequence[str | bytes], tfds_split: str) -> np.ndarray:
    """int64 [N]: the indices of the metadata entries' ``keys`` in tfds's stored order of split ``tfds_split``
    (``_common.tfds_order``); two entries with one key raise ValueError, as tfds's writer does."""
    return _common.tfds_order(keys, tfds_split, what="Pathfinder metadata entries")


def tfds_slice_bounds(num: int) -> dict[str, tuple[int, int]]:
    """{split: (start, stop)} of LRA's percent slices ``[:80%]``, ``[80%:90%]``, ``[90%:]`` of ``num``
    examples, with tfds's default "closest" rounding: ``int(round(pct * num / 100.0))`` (Python's round,
    halves to even), e.g. 25 -> 20, 2, 3."""

    def to_abs(pct: float | None, default: int) -> int:
        return default if pct is None else int(round(pct * num / 100.0))

    return {s: (to_abs(lo, 0), to_abs(hi, num)) for s, (lo, hi) in SPLIT_PERCENTS.items()}


def split_of(keys: Sequence[str | bytes], tfds_split: str = "hard") -> np.ndarray:
    """int8 [N]: the split of each metadata entry (0 train, 1 val, 2 test, as in SPLITS), LRA's way: the
    entries of all metadata files (unreadable images included) in tfds's order of their keys (tfds_order)
    cut at tfds's percent slices (tfds_slice_bounds). LRA drops empty images only after this cut, so an
    unreadable image leaves a gap in its split and moves no other image."""
    out = np.empty(len(keys), dtype=np.int8)
    order = tfds_order(keys, tfds_split)
    bounds = tfds_slice_bounds(len(keys))
    for code, split in enumerate(SPLITS):
        lo, hi = bounds[split]
        out[order[lo:hi]] = code
    return out


def split_indices(keys: Sequence[str | bytes], split: str, tfds_split: str = "hard") -> np.ndarray:
    """Sorted indices (into ``keys``) of the metadata entries in ``split`` (see split_of)."""
    if split not in SPLITS:
        raise ValueError(f"unknown Pathfinder split {split!r}; valid splits: {', '.join(SPLITS)}")
    return np.flatnonzero(split_of(keys, tfds_split) == SPLITS.index(split))


# --------------------------------------------------------------------------- loader entry points


def _cli_command(data_dir, resolution: int, difficulty: str | int) -> str:
    return (
        f"python -m lra.data.pathfinder --out {_common.q(data_dir)} --resolution {resolution} "
        f"--difficulty {difficulty_name(difficulty)} --num {DEFAULTS['num']} --seed {DEFAULTS['seed']}"
    )


def _missing_message(data_dir, resolution: int, difficulty: str | int) -> str:
    folder = release_dir(data_dir, resolution, difficulty)
    return (
        f"Pathfinder data not found: {folder / 'metadata'} does not exist.\n"
        f"Generate it with:\n    {_cli_command(data_dir, resolution, difficulty)}\n"
        f"or use the official LRA release: scripts/get_lra_data.sh --only pathfinder{resolution} "
        f"--data-dir {_common.q(data_dir)} "
        f"unpacks lra_release.gz there (or copy or symlink lra_release/lra_release/pathfinder{resolution} to "
        f"{Path(data_dir) / f'pathfinder{resolution}'}), so that the files lie in "
        f"{folder}/imgs/<k>/sample_<i>.png and {folder}/metadata/<k>.npy.\n"
        f"Or pass generate={{'num': ..., 'seed': ...}} (data.generate in the task config) to generate a cached copy."
    )


def check_available(
    *, data_dir, resolution: int = 32, difficulty: str | int = "hard", generate: dict | None = None, **_
) -> None:
    """Fail fast (paths only, no reading) when the data is missing and cannot be generated, or when ``generate``
    asks for something ensure_generated cannot do (generate_options)."""
    contour_length_of(difficulty)
    if generate is not None:
        generate_options(generate)
    if generate is None and not (release_dir(data_dir, resolution, difficulty) / "metadata").is_dir():
        raise FileNotFoundError(_missing_message(data_dir, resolution, difficulty))


def load(
    split: str, *, data_dir, resolution: int = 32, difficulty: str | int = "hard", generate: dict | None = None, **_
) -> dict[str, np.ndarray]:
    """Arrays of one split: ``inputs`` int32 [N, res*res] (pixels 0..255 as tokens, row-major), ``targets``
    int32 [N] (0/1), ``lengths`` int32 [N] (all res*res: a black pixel is data, not padding).

    Reads ``data_dir/pathfinder{res}/curv_contour_length_{n}/`` (our generated release or the official one).
    With ``generate`` (ensure_generated keyword arguments, e.g. {"num": 2000, "seed": 0}) the data set is
    generated once into ``data_dir/pathfinder{res}/generated-.../`` and read from there. The split is LRA's
    (split_of): 80/10/10 of all metadata entries in tfds's order of their keys, then unreadable images dropped;
    images come in (folder, file) order."""
    if split not in SPLITS:
        raise ValueError(f"unknown Pathfinder split {split!r}; valid splits: {', '.join(SPLITS)}")
    if generate is not None:
        folder = ensure_generated(data_dir, resolution=resolution, difficulty=difficulty,
                                  **generate_options(generate))
    else:
        check_available(data_dir=data_dir, resolution=resolution, difficulty=difficulty)
        folder = release_dir(data_dir, resolution, difficulty)
    images, labels, entry, keys = _read_release(Path(folder), resolution)
    sel = np.flatnonzero(split_of(keys, tfds_split_name(difficulty))[entry] == SPLITS.index(split))
    n = sel.size
    return {
        "inputs": images[sel].reshape(n, resolution * resolution).astype(np.int32),
        "targets": labels[sel].astype(np.int32),
        "lengths": np.full(n, resolution * resolution, dtype=np.int32),
    }


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lra.data.pathfinder",
        description="Generate Pathfinder / Path-X images in the LRA release layout "
        "(<out>/pathfinder<res>/curv_contour_length_<n>/{imgs,metadata}).",
    )
    parser.add_argument("--out", required=True, help="root folder; the data goes to <out>/pathfinder<res>/...")
    parser.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS)
    parser.add_argument(
        "--difficulty",
        default="hard",
        choices=tuple(DIFFICULTIES),
        help="contour length: easy 6, medium 9, hard 14 paddles (LRA uses hard)",
    )
    parser.add_argument("--num", type=int, default=DEFAULTS["num"], help="number of images")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--per-folder", type=int, default=DEFAULTS["per_folder"], help="images per imgs/<k> folder")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes, one folder each at a time (the output does not depend on it)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing folder that this generator did not write"
    )
    a = parser.parse_args(argv)
    if a.workers < 1:
        parser.error(f"--workers must be >= 1, got {a.workers}")
    if a.seed < 0:   # numpy's own message would not name the option
        parser.error(f"--seed must be >= 0, got {a.seed}")
    # SIGTERM (a batch system's stop) unwinds like Ctrl-C: the temporary folder is removed, workers stopped.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return _generate_command(a)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _generate_command(a) -> int:
    folder = release_dir(a.out, a.resolution, a.difficulty)
    if folder.name == "curv_baseline":  # we always write the curv_contour_length_<n> name
        folder = folder.parent / f"curv_contour_length_{contour_length_of(a.difficulty)}"
    t0 = time.monotonic()
    try:
        record = generate_release(
            folder,
            a.num,
            resolution=a.resolution,
            difficulty=a.difficulty,
            seed=a.seed,
            per_folder=a.per_folder,
            workers=a.workers,
            progress=True,
            force=a.force,
        )
    except (OSError, ValueError) as e:   # FileExistsError: a folder not ours; OSError: a full disk
        print(f"error: {e}", file=sys.stderr)
        return 2
    dt = time.monotonic() - t0
    folders = len(folder_sizes(a.num, a.per_folder))
    print(f"{folder}: {a.num} images ({record['positives']} positive) in {folders} folder(s)")
    print(f"{a.num / max(dt, 1e-9):.1f} images/s ({dt:.1f}s, {a.workers} worker(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
