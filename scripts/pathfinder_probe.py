"""Pathfinder leak probe: can a classifier that traces no path read the labels of generated images?

    pip install -e '.[probe]'                      # scikit-learn (the probe's classifier); nothing else needs it
    python scripts/pathfinder_probe.py             # 20,000 hard 32x32 images of seed 0 to train, of seed 1 to test
    python scripts/pathfinder_probe.py --num 4000 --difficulty easy

Labels should be decided by connectivity alone. This probe generates two sets of images with the project's
generator (``lra.data.pathfinder.generate``, which also returns the true marker centres), computes features
that need no path tracing, in groups (global ink and histogram; where the markers sit; the ink around each
marker in rings and angular sectors measured from the direction of the other marker; the direction in which
the ink leaves each marker; the ink along the straight segment between the markers; the image resampled in
the markers' frame), trains gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier) on the
first set and reports the held-out accuracy on the second, per group and for all of them together. Every
feature is symmetric in the two markers (their order carries nothing). Near 50% everywhere: no cue found;
well above: a cue a model could learn instead of the task. One JSON line per run goes to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a plain script from anywhere

RINGS = ((2.5, 4.0), (4.0, 6.0), (6.0, 9.0), (9.0, 13.0))   # px at 32x32, scaled with the resolution
SECTORS = 6


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=20000, help="images per set (train, test) [20000]")
    p.add_argument("--resolution", type=int, default=32, help="[32]")
    p.add_argument("--difficulty", default="hard", help="easy, medium or hard [hard]")
    p.add_argument("--seeds", type=int, nargs=2, default=(0, 1), metavar=("TRAIN", "TEST"), help="[0 1]")
    p.add_argument("--out", default="results/pathfinder_probe.jsonl", help="JSONL file ('' writes none)")
    args = p.parse_args(argv)
    if args.num < 100:
        p.error(f"--num must be at least 100, got {args.num}")
    return args


def _sample(images: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of images [N, H, W] at points x, y [N, ...] (0 outside)."""
    n, h, w = images.shape
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    rows = np.arange(n).reshape((n,) + (1,) * (x.ndim - 1))
    out = 0
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out = out + weight * np.where(inside, images[rows, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0.0)
    return out


def features(images: np.ndarray, markers: np.ndarray) -> dict[str, np.ndarray]:
    """{group: float [N, k]} for uint8 images [N, res, res] and marker centres [N, 2, (x, y)]."""
    n, res, _ = images.shape
    scale = res / 32
    ink = images.astype(np.float64) / 255
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64)
    a, b = markers[:, 0], markers[:, 1]
    d = b - a
    dist = np.hypot(*d.T)
    u = d / np.maximum(dist, 1e-9)[:, None]
    v = np.stack([-u[:, 1], u[:, 0]], 1)
    out = {}
    hist = np.stack([np.bincount(im.ravel() >> 3, minlength=32) for im in images])
    half = res // 2
    quadrants = [ink[:, :half, :half], ink[:, :half, half:], ink[:, half:, :half], ink[:, half:, half:]]
    out["ink and histogram"] = np.column_stack([ink.sum((1, 2)), (images > 0).sum((1, 2)), hist]
                                               + [q.sum((1, 2)) for q in quadrants])

    def border(m):
        return np.minimum(np.minimum(m[:, 0], res - 1 - m[:, 0]), np.minimum(m[:, 1], res - 1 - m[:, 1]))

    centre = (res - 1) / 2
    out["marker geometry"] = np.column_stack([
        dist, np.abs(d[:, 0]), np.abs(d[:, 1]), np.hypot(*((a + b) / 2 - centre).T),
        np.sort(np.stack([np.hypot(*(a - centre).T), np.hypot(*(b - centre).T)], 1), 1),
        np.sort(np.stack([border(a), border(b)], 1), 1)])
    polar, exits = [], []
    for m, towards in ((a, u), (b, -u)):
        vx, vy = xx[None] - m[:, 0, None, None], yy[None] - m[:, 1, None, None]
        r = np.hypot(vx, vy) / scale
        tx, ty = towards[:, 0, None, None], towards[:, 1, None, None]
        sector = np.minimum(np.abs(np.arctan2(tx * vy - ty * vx, tx * vx + ty * vy)) / np.pi * SECTORS, SECTORS - 1)
        sector = sector.astype(np.int64)
        polar.append(np.stack([(ink * ((r >= lo) & (r < hi)) * (sector == k)).sum((1, 2))
                               for lo, hi in RINGS for k in range(SECTORS)], 1))
        w = ink * ((r >= 2.5) & (r < 5.0)) / np.maximum(r, 1e-9)
        mx, my = (w * vx).sum((1, 2)), (w * vy).sum((1, 2))
        exits.append((mx * towards[:, 0] + my * towards[:, 1]) / np.maximum(np.hypot(mx, my), 1e-9))
    cosines = np.stack(exits, 1)
    exit_cos = np.column_stack([cosines.min(1), cosines.max(1), cosines.sum(1)])
    out["exit directions and distance"] = np.column_stack([exit_cos, dist])
    out["ink around the markers"] = np.column_stack([polar[0] + polar[1], np.abs(polar[0] - polar[1]), dist])
    px, py = xx[None] - a[:, 0, None, None], yy[None] - a[:, 1, None, None]
    t = np.clip((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / np.maximum(dist**2, 1e-9)[:, None, None], 0, 1)
    across = np.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None]) / scale
    away = (np.hypot(px, py) > 3 * scale) & (np.hypot(xx[None] - b[:, 0, None, None], yy[None] - b[:, 1, None, None])
                                             > 3 * scale)
    bands = [(ink * ((across < width) & away)).sum((1, 2)) for width in (1.0, 2.0, 3.0, 5.0)]
    out["ink along the segment"] = np.column_stack(bands + [dist])
    # The image in the markers' frame: s along a -> b in units of their distance, w across in px, folded so that
    # the two markers and the two sides count alike.
    s, w = np.meshgrid(np.linspace(-0.3, 1.3, 17), np.linspace(-8, 8, 9) * scale, indexing="ij")
    frame = _sample(ink, a[:, 0, None, None] + s * d[:, 0, None, None] + w * v[:, 0, None, None],
                    a[:, 1, None, None] + s * d[:, 1, None, None] + w * v[:, 1, None, None])
    frame = frame + frame[:, ::-1, :]
    frame = frame + frame[:, :, ::-1]
    out["markers' frame"] = np.column_stack([frame[:, :9, :5].reshape(n, -1), dist])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        print("error: the probe needs scikit-learn: pip install -e '.[probe]'", file=sys.stderr)
        return 2
    from lra import results
    from lra.data import pathfinder

    try:
        pathfinder.params_for(args.resolution, args.difficulty)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    sets = []
    for seed in args.seeds:
        images, labels, markers = pathfinder.generate(args.num, resolution=args.resolution,
                                                      difficulty=args.difficulty, seed=seed, return_markers=True)
        sets.append((features(images, markers), labels))
    (train, y_train), (test, y_test) = sets
    groups = {**{name: [name] for name in train}, "all": list(train)}
    accuracies = {}
    for name, keys in groups.items():
        model = HistGradientBoostingClassifier(max_iter=300, random_state=0)
        model.fit(np.column_stack([train[k] for k in keys]), y_train)
        accuracies[name] = round(float((model.predict(np.column_stack([test[k] for k in keys])) == y_test).mean()), 4)
        print(f"{name:32s} {sum(train[k].shape[1] for k in keys):4d} features  held-out accuracy "
              f"{accuracies[name]:.4f}", flush=True)
    import sklearn

    record = {
        "kind": "pathfinder_probe", "resolution": args.resolution, "difficulty": args.difficulty,
        "generator_version": pathfinder.GENERATOR_VERSION, "num": args.num, "seeds": list(args.seeds),
        "classifier": f"scikit-learn {sklearn.__version__} HistGradientBoostingClassifier(max_iter=300)",
        "accuracy": accuracies, "seconds": round(time.monotonic() - t0, 1),
        **results.provenance(),
    }
    if args.out:
        results.append_jsonl(args.out, record)
        print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
