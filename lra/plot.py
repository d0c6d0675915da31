"""The LRA summary chart (the paper's Figure 3) and Table 2 as curves, redrawn from recorded results.

    python -m lra.plot [--results results/] [--out results/lra_summary.png] [--profile cpu] [--bench cpu_long]
                       [--no-paper]

Writes, next to ``--out``:
  lra_summary.png / .html   x = examples/s of one train step at the longest benchmarked length (bench.jsonl),
                            y = LRA score = mean test accuracy over the tasks every plotted variant has a run of
                            (runs.jsonl; the tasks are named on the chart), bubble area = peak memory at that
                            length. The paper's own points (Tables 1 and 2: TPU v3, batch 32, 4K, five-task
                            average) are a faint overlay on a second x axis, since its units are another machine's;
                            ``--no-paper`` leaves them out. The HTML is one self-contained file (the same two x
                            axes): hover a bubble for its numbers. Labels cover no other label and no bubble of
                            ours (``place_labels``), with a leader line where they had to move away.
  lra_speed_vs_length.png   steps/s against length per variant (the bench group with the most lengths).
  lra_memory_vs_length.png  peak memory against length per variant (same rows).

Runs are averaged over seeds per (task, variant) within one profile (default: the profile with the most runs),
and only the runs of the variant's main setting count (``results.main_settings``: the config with the most seeds;
runs of another max_length, impl or number of steps are left out, and the footnote says so). Bench rows are taken
from one group of equal (preset, batch size, device, dtype, model) (default: the group whose longest length with
an ``ok`` row is longest; ties go to more variants, then to XLA rows). In a group, each (attention, impl) is its
own series, named 'local (pallas)' beside an XLA 'local'; a score joins the XLA row of its variant (or its only
row). Only recorded numbers are drawn; variants lacking a score or a speed are listed in the chart's footnote
(with the status, oom or error, of a failed row) instead of being guessed. With no bench row to draw nothing is
written; with bench rows but no runs.jsonl only the two curves are drawn.
"""
from __future__ import annotations

import argparse
import html
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

from lra import results as results_lib

# The paper's numbers (Tay et al. 2021, "Long Range Arena"). Table 1 test accuracy (%) per task (Path-X: every
# model failed) and Table 2 at 4K (steps/s with batch 32 on a 4x4 TPU v3, peak memory GB per device), by
# registry name (the paper's "Local Attention", non-overlapping blocks of 50, is our block_local).
PAPER_TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
PAPER_ACCURACY = {
    "full": (36.37, 64.27, 57.46, 42.44, 71.40),
    "block_local": (15.82, 52.98, 53.39, 41.46, 66.63),
    "sparse": (17.07, 63.58, 59.59, 44.24, 71.71),
    "longformer": (35.63, 62.85, 56.89, 42.22, 69.71),
    "linformer": (35.70, 53.94, 52.27, 38.56, 76.34),
    "reformer": (37.27, 56.10, 53.40, 38.07, 68.50),
    "sinkhorn": (33.67, 61.20, 53.83, 41.23, 67.45),
    "synthesizer": (36.99, 61.68, 54.67, 41.61, 69.45),
    "bigbird": (36.05, 64.02, 59.29, 40.83, 74.87),
    "linear": (16.13, 65.90, 53.09, 42.34, 75.30),
    "performer": (18.01, 65.40, 53.82, 42.77, 77.05),
}
PAPER_SPEED_4K = {
    "full": (1.4, 9.48), "block_local": (7.4, 1.37), "linformer": (7.7, 0.99), "reformer": (1.1, 2.28),
    "sinkhorn": (5.3, 1.48), "synthesizer": (1.9, 6.99), "bigbird": (1.5, 2.88), "linear": (7.8, 1.03),
    "performer": (8.0, 1.06),
}
PAPER_BATCH = 32


def paper_points(tasks: list[str]) -> dict[str, tuple[float, float, float]]:
    """name -> (the paper's mean accuracy over ``tasks`` (all five when none of them is in Table 1), examples/s
    at 4K, memory GB at 4K), for the variants Table 2 timed."""
    idx = [PAPER_TASKS.index(t) for t in tasks if t in PAPER_TASKS] or list(range(len(PAPER_TASKS)))
    return {name: (statistics.fmean(PAPER_ACCURACY[name][i] for i in idx), sps * PAPER_BATCH, gb)
            for name, (sps, gb) in PAPER_SPEED_4K.items()}


def paper_y(tasks: list[str], axis: bool = False) -> str:
    """What the paper's points' y is for these tasks (``paper_points``), in words: for a tooltip, or (``axis``)
    for the chart's paper axis."""
    known = [t for t in tasks if t in PAPER_TASKS]
    absent = [t for t in tasks if t not in PAPER_TASKS]
    if not absent:
        return "its accuracy on the same tasks" if axis else f"mean over {', '.join(known) or 'its five tasks'}"
    what = f"mean over {', '.join(known)}" if known else "five-task average"
    return f"its {what} (no {', '.join(absent)} in Table 1)" if axis else f"{what}; no {', '.join(absent)} in Table 1"


# Our bubbles' colours: tab20 without its two greys (indices 14 and 15), which look like the paper's faint points.
OUR_COLOURS = tuple(i for i in range(20) if i not in (14, 15))

# ------------------------------------------------------------------------------------------------ selection


def run_accuracies(runs: list[dict], profile: str | None = None
                   ) -> tuple[dict[tuple, list[float]], str | None, list[str]]:
    """((task, variant) -> the test accuracies of its seeds, the profile used, the variants of that profile with
    runs of another setting) from run records: the latest record of a seed counts, and only runs of the main
    setting of each (task, variant) (``results.main_settings``: the one with the most seeds), so that a run of
    another max_length or impl, or a short check, is not mixed in. The profile defaults to the one with the most
    runs."""
    if profile is None and runs:
        counts = defaultdict(int)
        for r in runs:
            counts[r.get("profile")] += 1
        profile = max(counts, key=lambda p: (counts[p], str(p)))
    latest = results_lib.latest_per_seed(runs)
    main = results_lib.main_settings(runs, latest)
    per, others = defaultdict(list), set()
    for (task, attention, run_profile, _, where), r in latest.items():
        if run_profile != profile:
            continue
        if where == main[task, attention, run_profile]:
            per[(task, attention)].append(float(r["test_accuracy"]))
        else:
            others.add(str(attention))
    return dict(per), profile, sorted(others)


def scores(runs: list[dict], profile: str | None = None,
           variants: Collection[str] | None = None) -> tuple[dict[str, float], list[str], str | None]:
    """(variant -> LRA score in %, the tasks averaged, the profile used) from run records.

    Test accuracy is averaged over seeds per (task, variant) (``run_accuracies``); a variant's score is the mean
    over the tasks that every scored variant has (so scores compare like with like). ``variants``: the variants
    to score (those that will be drawn); default every variant with runs."""
    per, profile, _ = run_accuracies(runs, profile)
    return (*scores_of(per, variants), profile)


def scores_of(per: dict[tuple, list[float]], variants: Collection[str] | None = None
              ) -> tuple[dict[str, float], list[str]]:
    """(variant -> score in %, the tasks averaged) from ``run_accuracies``'s accuracies (see ``scores``)."""
    tasks_of = defaultdict(set)
    for task, variant in per:
        if variants is None or variant in variants:
            tasks_of[variant].add(task)
    if not tasks_of:
        return {}, []
    common = sorted(set.intersection(*tasks_of.values()))
    out = {v: 100 * statistics.fmean(statistics.fmean(per[(t, v)]) for t in common) for v in tasks_of} if common \
        else {}
    return out, common


_MEASURES = ("length", "steps_per_second", "examples_per_second", "peak_memory_bytes")


def group_key(row: dict) -> tuple:
    """The bench group of a row: (preset, batch size, device, dtype, model): rows of one group differ only in
    attention, impl and length, so their speeds compare."""
    return row.get("bench"), row.get("batch_size"), row.get("device"), row.get("dtype"), results_lib.model_key(row)


def bench_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """ok rows grouped by ``group_key`` (preset, batch size, device, dtype, model); rows without a positive finite
    length, speed or memory (an older format, a null) cannot be drawn and are left out. Within a group, each
    (attention, impl) is a series of its own (``series_names``)."""
    groups = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and all((results_lib.number(r.get(k)) or 0) > 0 for k in _MEASURES):
            groups[group_key(r)].append(r)
    return dict(groups)


def pick_group(groups: dict[tuple, list[dict]], preset: str | None, key) -> tuple | None:
    """The group (of preset ``preset``, if given) with the largest ``key(rows)``; ties go to the group with more
    variants, then to one of XLA rows (no Pallas row, a preset not named for Pallas), then by its key's text."""
    def rank(g):
        rows = groups[g]
        pallas = "pallas" in str(g[0]) or any((r.get("impl") or "xla") != "xla" for r in rows)
        return key(rows), len({r["attention"] for r in rows}), not pallas

    candidates = sorted((g for g in groups if preset is None or g[0] == preset), key=str)
    return max(candidates, key=rank, default=None)


def series_names(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(attention, impl) -> the name of its series: the variant's name, with the impl in brackets for a non-XLA
    series of a variant whose XLA rows are there too ('local (pallas)')."""
    pairs = {(r["attention"], r.get("impl") or "xla") for r in rows}
    return {(a, i): a if i == "xla" or (a, "xla") not in pairs else f"{a} ({i})" for a, i in pairs}


def speeds_at_longest(rows: list[dict]) -> tuple[int | None, dict[str, dict]]:
    """(longest length, series name (``series_names``) -> its row at that length); the latest row wins when a
    series repeats."""
    if not rows:
        return None, {}
    longest, names = max(r["length"] for r in rows), series_names(rows)
    return longest, {names[r["attention"], r.get("impl") or "xla"]: r for r in rows if r["length"] == longest}


def failed_at(rows: list[dict], group: tuple, length) -> dict[str, str]:
    """attention -> status of the latest failed row (oom, error ...) of ``group`` at ``length``; a failed row
    matches the group on the fields it records."""
    out = {}
    for r in rows:
        if r.get("status") != "ok" and r.get("length") == length and all(
                mine is None or mine == "null" or mine == theirs for mine, theirs in zip(group_key(r), group)):
            out[str(r.get("attention"))] = str(r.get("status"))
    return out


# ------------------------------------------------------------------------------------------------- drawing

# Label placement: directions tried around a bubble (unit vectors, y up): above, below, right, left, then the
# diagonals; each on rings further and further out until the label touches no other label or bubble.
_DIRECTIONS = ((0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (-1.0, 0.0), (0.71, 0.71), (-0.71, 0.71), (0.71, -0.71),
               (-0.71, -0.71))
_RINGS = 8


def _overlap(a, b) -> float:
    """Area shared by two boxes (x0, y0, x1, y1)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _hits_circle(box, circle) -> bool:
    x, y, r = circle
    nx, ny = min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])
    return (x - nx) ** 2 + (y - ny) ** 2 < r * r


def place_labels(anchors, sizes, radii, bounds, *, obstacles=(), taken=(), pad: float = 3.0):
    """Where to put one label per bubble so that labels overlap neither each other nor other bubbles.

    All lengths in one screen unit (pixels), y pointing up. ``anchors``: bubble centres; ``sizes``: (width,
    height) of each label; ``radii``: each bubble's radius; ``bounds``: (x0, y0, x1, y1) a label must stay in;
    ``obstacles``: circles (x, y, r) no label may cover (every bubble, its own included); ``taken``: boxes
    already occupied (labels placed before). Greedy, in the given order: each label takes the first candidate
    (above its bubble, below, right, left, diagonals; nearest ring first) that is inside ``bounds`` and free;
    when none is, the one with the least overlap. Returns the boxes (x0, y0, x1, y1) and, per label, whether it
    sits beyond the first ring (then a leader line to its bubble helps the reader).
    """
    boxes, far = [], []
    occupied = [tuple(b) for b in taken]
    for (x, y), (w, h), r in zip(anchors, sizes, radii):
        best, best_cost, best_ring = None, math.inf, 0
        for ring in range(_RINGS):
            d = r + pad + ring * (h + pad)
            for ux, uy in _DIRECTIONS:
                cx = x + ux * d + math.copysign(w / 2, ux) * (ux != 0)
                cy = y + uy * d + math.copysign(h / 2, uy) * (uy != 0)
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                outside = (max(0.0, bounds[0] - box[0]) + max(0.0, box[2] - bounds[2])
                           + max(0.0, bounds[1] - box[1]) + max(0.0, box[3] - bounds[3]))
                cost = (1e6 * outside + sum(_overlap(box, o) for o in occupied)
                        + sum(w * h for c in obstacles if _hits_circle(box, c)))
                if cost < best_cost:
                    best, best_cost, best_ring = box, cost, ring
                if cost == 0:
                    break
            if best_cost == 0:
                break
        boxes.append(best)
        far.append(best_ring > 0)
        occupied.append(best)
    return boxes, far



def _bubble_size(memory_bytes: float, scale: float) -> float:
    return max(20.0, scale * memory_bytes / 2**30)


def summary_points(score: dict[str, float], at_length: dict[str, dict]) -> list[dict]:
    points = []
    for name in sorted(set(score) & set(at_length)):
        row = at_length[name]
        points.append({"attention": name, "score": score[name], "examples_per_second": row["examples_per_second"],
                       "steps_per_second": row["steps_per_second"], "memory_bytes": row["peak_memory_bytes"],
                       "memory_method": row.get("memory_method"), "length": row["length"],
                       "batch_size": row["batch_size"], "device": row.get("device")})
    return points


def draw_summary(points: list[dict], tasks: list[str], profile, footnote: str, out: Path, paper: bool) -> list:
    """Draw the summary PNG; returns each label as (text, (x0, y0, x1, y1)), its box in the figure's pixels as
    drawn (for tests: labels must not overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.text  # noqa: F401  (used through matplotlib.text)
    import matplotlib.ticker  # noqa: F401  (used through matplotlib.ticker)
    from matplotlib.font_manager import FontProperties

    fig, ax = plt.subplots(figsize=(8.5, 6), dpi=120)
    ref = paper_points(tasks) if paper else {}
    sizes = {}                       # scatter sizes (points^2), for the labels' placement below
    if paper:
        top = ax.twiny()
        for name, (avg, x, gb) in ref.items():
            sizes["paper", name] = _bubble_size(gb * 2**30, 60)
            top.scatter([x], [avg], s=sizes["paper", name], color="0.6", alpha=0.18, edgecolors="0.5")
        top.set_xscale("log")
        top.set_xlabel(f"paper (faint): examples/s at 4K, batch {PAPER_BATCH}, 4x4 TPU v3; "
                       f"y = {paper_y(tasks, axis=True)}", color="0.45", fontsize=8)
        top.tick_params(axis="x", colors="0.5", labelsize=7)
    if points:
        cmap = plt.get_cmap("tab20")
        for i, p in enumerate(points):
            sizes["ours", p["attention"]] = _bubble_size(p["memory_bytes"], 120)
            ax.scatter([p["examples_per_second"]], [p["score"]], s=sizes["ours", p["attention"]],
                       color=cmap(OUR_COLOURS[i % len(OUR_COLOURS)]), alpha=0.55, edgecolors="black",
                       linewidths=0.6, zorder=3)
        ax.set_xscale("log")
        first = points[0]
        ax.set_xlabel(f"examples/s, one train step at length {first['length']}, batch {first['batch_size']} "
                      f"({first['device']})", fontsize=9)
    ax.set_ylabel(f"LRA score: mean test accuracy (%) over {', '.join(tasks) or 'no task'} (profile {profile})",
                  fontsize=9)
    ax.set_title("Long Range Arena: score vs speed, bubble area = peak memory", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    if paper and points:
        # Both axes show the same data range when possible: align the paper's axis to its own points.
        xs = [x for _, x, _ in ref.values()]
        top.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    for axis in ([ax.xaxis, top.xaxis] if paper else [ax.xaxis]):
        if axis.get_scale() == "log":   # 1, 2, 5 in each decade (every digit within less than one decade)
            lo, hi = axis.get_view_interval()
            subs = (1.0, 2.0, 5.0) if hi > 10 * lo else tuple(float(d) for d in range(1, 10))
            axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.text(0.01, 0.01, footnote, fontsize=7, color="0.35", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))

    # Labels go where they cover no other label and no bubble of ours: placed in pixels once the layout is final,
    # ours first, then the paper's around them.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72
    frame = ax.get_window_extent(renderer)
    bounds = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    groups = [("ours", ax, [(p["attention"], p["examples_per_second"], p["score"]) for p in points], 8, "black"),
              ("paper", top if paper else ax, [(n, x, avg) for n, (avg, x, _) in ref.items()], 7, "0.55")]
    # Bubbles in pixels: (centre x, centre y, radius), per group; a scatter size is an area in points^2.
    circles = {kind: [(*map(float, axes.transData.transform((x, y))), math.sqrt(sizes[kind, name]) / 2 * px_per_pt)
                      for name, x, y in items] for kind, axes, items, _, _ in groups}
    taken, artists = [], []
    for kind, axes, items, fontsize, color in groups:
        if not items:
            continue
        font = FontProperties(size=fontsize)
        dims = [renderer.get_text_width_height_descent(name, font, ismath=False)[:2] for name, _, _ in items]
        boxes, far = place_labels([(cx, cy) for cx, cy, _ in circles[kind]], dims, [r for *_, r in circles[kind]],
                                  bounds, obstacles=circles["ours"], taken=taken)
        taken += boxes
        for (name, x, y), (cx, cy, _), box, leader in zip(items, circles[kind], boxes, far):
            offset = (((box[0] + box[2]) / 2 - cx) / px_per_pt, ((box[1] + box[3]) / 2 - cy) / px_per_pt)
            artists.append(axes.annotate(
                name, (x, y), xytext=offset, textcoords="offset points", fontsize=fontsize, color=color,
                ha="center", va="center", zorder=4,
                arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5, shrinkA=1, shrinkB=2) if leader else None))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    drawn = [(a.get_text(), tuple(matplotlib.text.Text.get_window_extent(a, renderer).extents)) for a in artists]
    plt.close(fig)
    return drawn


def draw_curves(rows: list[dict], out_speed: Path, out_memory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (used through matplotlib.ticker)

    by_variant, names = defaultdict(dict), series_names(rows)
    for r in rows:
        by_variant[names[r["attention"], r.get("impl") or "xla"]][r["length"]] = r
    device = rows[0].get("device") if rows else ""
    batch = rows[0].get("batch_size") if rows else ""
    for out, key, label, scale in ((out_speed, "steps_per_second", "train steps/s", 1.0),
                                   (out_memory, "peak_memory_bytes", "peak memory (GiB)", 2.0**-30)):
        fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
        tab20, markers = plt.get_cmap("tab20"), "osD^vP*Xh<>p"
        for i, name in enumerate(sorted(by_variant)):   # 20 colours and 12 markers: no two variants look alike
            lengths = sorted(by_variant[name])
            ax.plot(lengths, [by_variant[name][n][key] * scale for n in lengths], marker=markers[i % len(markers)],
                    color="black" if name == "full" else tab20(i % 20), label=name,
                    linestyle="--" if name == "full" else "-")   # full attention: the baseline, black dashed
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["length"] for r in rows}), [str(n) for n in sorted({r["length"] for r in rows})])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.set_title(f"Text backbone, batch {batch}: {label} vs length\n{device}", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        if by_variant:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))   # beside the axes, not over lines
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)


def summary_html(points: list[dict], tasks: list[str], profile, footnote: str, paper: bool) -> str:
    """A self-contained HTML page: an SVG bubble chart whose bubbles show their numbers on hover."""
    width, height, margin = 760, 520, 70
    ref = paper_points(tasks) if paper else {}
    ours_x = [p["examples_per_second"] for p in points]
    paper_x = [x for _, x, _ in ref.values()]
    all_y = [p["score"] for p in points] + [a for a, _, _ in ref.values()] or [0.0, 100.0]
    lo_y, hi_y = min(all_y) - 3, max(all_y) + 3

    def log_scale(xs):
        """x -> pixel on a log axis spanning ``xs`` (with a margin of 1.5x each side)."""
        lo, hi = math.log10(min(xs or [1.0]) / 1.5), math.log10(max(xs or [10.0]) * 1.5)
        return lambda x: margin + (math.log10(x) - lo) / (hi - lo) * (width - 2 * margin), lo, hi

    # As in the PNG: our points on the bottom axis, the paper's (another machine's units) on a top axis of its own.
    sx, lo_x, hi_x = log_scale(ours_x or paper_x)
    px, lo_p, hi_p = log_scale(paper_x) if ours_x else (sx, lo_x, hi_x)

    def sy(y):
        return height - margin - (y - lo_y) / (hi_y - lo_y) * (height - 2 * margin)

    def ticks(lo, hi):
        """1, 2 and 5 in each decade between 10**lo and 10**hi."""
        return [m * 10**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)
                if lo <= math.log10(m * 10**e) <= hi]

    def circle(scale_x, x, y, gib, scale, style, tip):
        r = math.sqrt(_bubble_size(gib * 2**30, scale)) / 1.6
        return (f'<circle cx="{scale_x(x):.1f}" cy="{sy(y):.1f}" r="{r:.1f}" style="{style}">'
                f"<title>{html.escape(tip)}</title></circle>"), (scale_x(x), sy(y), r)

    def labels(items, font_px, style, taken, obstacles):
        """<text> (and leader <line>) elements for (label, (cx, cy, r)) items, placed by ``place_labels`` in a
        y-up frame (SVG's y points down); text widths estimated from the font size."""
        if not items:
            return [], []
        sizes = [(0.62 * font_px * len(name) + 2, 1.25 * font_px) for name, _ in items]
        boxes, far = place_labels([(cx, -cy) for _, (cx, cy, _) in items], sizes, [r for _, (_, _, r) in items],
                                  (margin + 2, -(height - margin) + 2, width - margin - 2, -margin - 2),
                                  obstacles=[(cx, -cy, r) for cx, cy, r in obstacles],
                                  taken=[(x0, -y1, x1, -y0) for x0, y0, x1, y1 in taken])
        out = []
        for (name, (cx, cy, r)), box, leader in zip(items, boxes, far):
            tx, ty = (box[0] + box[2]) / 2, -(box[1] + box[3]) / 2
            if leader:   # from the bubble's edge towards the label
                d = math.hypot(tx - cx, ty - cy) or 1.0
                out.append(f'<line x1="{cx + r * (tx - cx) / d:.1f}" y1="{cy + r * (ty - cy) / d:.1f}" '
                           f'x2="{tx:.1f}" y2="{ty:.1f}" stroke="#aaa" stroke-width="0.6"/>')
            out.append(f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="middle" dominant-baseline="central" '
                       f'style="{style}">{html.escape(name)}</text>')
        return out, [(x0, -y1, x1, -y0) for x0, y0, x1, y1 in boxes]

    parts = []
    for v in ticks(lo_x, hi_x):
        parts.append(f'<line x1="{sx(v):.1f}" y1="{margin}" x2="{sx(v):.1f}" y2="{height - margin}" '
                     f'stroke="#ddd"/><text x="{sx(v):.1f}" y="{height - margin + 16}" '
                     f'text-anchor="middle" font-size="11">{v:g}</text>')
    if paper and ours_x:
        for v in ticks(lo_p, hi_p):
            parts.append(f'<line x1="{px(v):.1f}" y1="{margin - 4}" x2="{px(v):.1f}" y2="{margin}" stroke="#aaa"/>'
                         f'<text x="{px(v):.1f}" y="{margin - 8}" text-anchor="middle" font-size="10" '
                         f'fill="#999">{v:g}</text>')
    for y in range(math.ceil(lo_y), math.floor(hi_y) + 1):
        if y % 5 == 0:
            parts.append(f'<line x1="{margin}" y1="{sy(y):.1f}" x2="{width - margin}" y2="{sy(y):.1f}" '
                         f'stroke="#eee"/><text x="{margin - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" '
                         f'font-size="11">{y}</text>')
    bubbles, ours, theirs = [], [], []
    if paper:
        for name, (avg, x, gb) in ref.items():
            tip = (f"paper: {name}\naccuracy {avg:.2f} (Table 1, {paper_y(tasks)})\n"
                   f"{x:.0f} examples/s ({x / PAPER_BATCH} steps/s at 4K, batch {PAPER_BATCH}, 4x4 TPU v3)\n"
                   f"{gb} GB peak memory per device")
            element, where = circle(px, x, avg, gb, 60, "fill:#999;fill-opacity:0.15;stroke:#999", tip)
            bubbles.append(element)
            theirs.append((name, where))
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"]   # the PNG's colours, so that a variant looks the same in both
    palette = [matplotlib.colors.to_hex(tab20(i)) for i in OUR_COLOURS]
    for i, p in enumerate(points):
        tip = (f"{p['attention']}\nscore {p['score']:.2f}% ({', '.join(tasks)}, profile {profile})\n"
               f"{p['examples_per_second']:.3f} examples/s, {p['steps_per_second']:.3f} steps/s at length "
               f"{p['length']}, batch {p['batch_size']}\npeak memory {p['memory_bytes'] / 2**30:.2f} GiB "
               f"({p['memory_method']})\n{p['device']}")
        element, where = circle(sx, p["examples_per_second"], p["score"], p["memory_bytes"] / 2**30, 120,
                                f"fill:{palette[i % len(palette)]};fill-opacity:0.55;stroke:#000", tip)
        bubbles.append(element)
        ours.append((p["attention"], where))
    # Labels after every bubble, so that none is hidden under one: ours first, the paper's around them.
    obstacles = [where for _, where in ours]
    our_text, taken = labels(ours, 11, "font-size:11px", [], obstacles)
    their_text, _ = labels(theirs, 10, "font-size:10px;fill:#aaa", taken, obstacles)
    parts += bubbles + our_text + their_text
    length = points[0]["length"] if points else "?"
    top_title = (f'<text x="{width / 2}" y="{margin - 26}" text-anchor="middle" font-size="11" fill="#888">paper '
                 f"(faint, top axis): examples/s at 4K, batch {PAPER_BATCH}, 4x4 TPU v3; y = "
                 f"{html.escape(paper_y(tasks, axis=True))}</text>") if paper else ""
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
           f'<rect x="{margin}" y="{margin}" width="{width - 2 * margin}" height="{height - 2 * margin}" '
           f'fill="none" stroke="#888"/>{"".join(parts)}'
           f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle" font-size="12">examples/s at length '
           f"{length} (log)</text>{top_title}"
           f'<text x="18" y="{height / 2}" text-anchor="middle" font-size="12" '
           f'transform="rotate(-90 18 {height / 2})">LRA score (%): {html.escape(", ".join(tasks))}</text></svg>')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>LRA summary</title></head><body>"
            "<h3 style='font-family:sans-serif'>Long Range Arena: score vs speed, bubble area = peak memory</h3>"
            f"{svg}<p style='font-family:sans-serif;font-size:12px;color:#555'>{html.escape(footnote)}</p>"
            "</body></html>")


# ---------------------------------------------------------------------------------------------------- main


def find_records(results_dir: Path, profile: str | None = None) -> tuple[Path | None, Path]:
    """(runs.jsonl, or None when only bench rows are recorded and no profile is asked for, bench.jsonl);
    FileNotFoundError, saying what writes them, when there is nothing to plot. Creates nothing."""
    runs_path, bench_path = results_dir / "runs.jsonl", results_dir / "bench.jsonl"
    if not bench_path.exists() or (profile is not None and not runs_path.exists()):
        missing = [str(p) for p in (runs_path, bench_path) if not p.exists()]
        raise FileNotFoundError(f"no records to plot: {', '.join(missing)} missing (python -m lra.train ... and "
                                f"python -m lra.bench ... write them)")
    return (runs_path if runs_path.exists() else None), bench_path


def _nothing_to_plot(rows: list[dict], bench_path: Path, preset: str | None) -> ValueError:
    statuses = defaultdict(int)
    for r in rows:
        if preset is None or r.get("bench") == preset:
            statuses[str(r.get("status"))] += 1
    held = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "no rows"
    return ValueError(f"nothing to plot: {bench_path} has no ok row with a length, speed and memory"
                      f"{f' of preset {preset!r}' if preset else ''} ({held}); the charts already there are left "
                      f"as they are (python -m lra.bench ... measures)")


def plot(results_dir: Path, out: Path, *, profile: str | None = None, bench: str | None = None,
         paper: bool = True) -> dict:
    """Draw every figure; returns what was drawn (for tests and the command's printout). With bench rows but no
    runs.jsonl, only the speed and memory curves are drawn (the footnote says so). Nothing is written when no
    bench row can be drawn (ValueError)."""
    runs_path, bench_path = find_records(results_dir, profile)
    runs, rows = results_lib.read_jsonl(runs_path) if runs_path else None, results_lib.read_jsonl(bench_path)
    # A profile or preset named but not recorded is a typo, not an empty chart.
    if profile is not None and not any(r.get("profile") == profile for r in runs):
        recorded = sorted({str(r.get("profile")) for r in runs})
        raise ValueError(f"no runs of profile {profile!r} in {runs_path}; its profiles: "
                         f"{', '.join(recorded) or 'none'}")
    if bench is not None and not any(r.get("bench") == bench and r.get("status") == "ok" for r in rows):
        recorded = sorted({str(r.get("bench")) for r in rows if r.get("status") == "ok"})
        raise ValueError(f"no ok rows of bench preset {bench!r} in {bench_path}; its presets: "
                         f"{', '.join(recorded) or 'none'}")
    groups = bench_groups(rows)
    summary_group = pick_group(groups, bench, key=lambda rs: max(r["length"] for r in rs))
    curves_group = pick_group(groups, bench, key=lambda rs: (len({r["length"] for r in rs}), len(rs)))
    if summary_group is None:
        raise _nothing_to_plot(rows, bench_path, bench)
    speed_png, memory_png = out.parent / "lra_speed_vs_length.png", out.parent / "lra_memory_vs_length.png"
    if runs is None:
        draw_curves(groups[curves_group], speed_png, memory_png)
        return {"points": [], "tasks": [], "profile": None, "length": None, "labels": [],
                "footnote": f"no summary chart: {results_dir / 'runs.jsonl'} does not exist (python -m lra.train ... "
                            f"writes it); drew the speed and memory curves of bench preset {curves_group[0]}",
                "files": [speed_png, memory_png]}
    length, at_length = speeds_at_longest(groups[summary_group])
    # A variant's score joins its XLA row (or its only row); another impl of it is a curve of its own.
    joined = {name: r for name, r in at_length.items() if name == r["attention"]}
    per, used_profile, others = run_accuracies(runs, profile)
    score, tasks = scores_of(per, variants=set(joined))
    ran = {variant for _, variant in per}
    points = summary_points(score, joined)
    preset = summary_group[0]
    notes = [f"runs: profile {used_profile}, mean over seeds; bench: preset {preset}"]
    failed = failed_at(rows, summary_group, length)
    missing = sorted(ran - set(joined))
    for status in sorted({failed[v] for v in missing if v in failed}):
        notes.append(f"{status} at length {length}: {', '.join(v for v in missing if failed.get(v) == status)}")
    if [v for v in missing if v not in failed]:
        notes.append(f"no bench row at length {length}: {', '.join(v for v in missing if v not in failed)}")
    if ran & set(joined) and not tasks:
        tasks_of = defaultdict(list)
        for task, variant in sorted(per):
            if variant in joined:
                tasks_of[variant].append(str(task))
        notes.append("no task that every benchmarked variant has a run of (" +
                     "; ".join(f"{v}: {', '.join(t)}" for v, t in sorted(tasks_of.items())) + ")")
    no_score = sorted(set(joined) - ran)
    if no_score:
        notes.append(f"benchmarked but no run (profile {used_profile}): {', '.join(no_score)}")
    if set(at_length) - set(joined):
        notes.append(f"in the curves only: {', '.join(sorted(set(at_length) - set(joined)))}")
    if others:
        notes.append(f"runs of other settings left out: {', '.join(others)} (python -m lra.results --summary)")
    footnote = "; ".join(notes)
    labels = draw_summary(points, tasks, used_profile, footnote, out, paper)
    out.with_suffix(".html").write_text(summary_html(points, tasks, used_profile, footnote, paper))
    draw_curves(groups[curves_group], speed_png, memory_png)
    return {"points": points, "tasks": tasks, "profile": used_profile, "length": length, "footnote": footnote,
            "labels": labels, "files": [out, out.with_suffix(".html"), speed_png, memory_png]}


def check_out(out: Path) -> None:
    """Refuse, before drawing, a summary path that cannot be written: the charts go beside it."""
    if out.suffix.lower() != ".png" or out.is_dir():
        raise ValueError(f"--out {out}: give the summary PNG's file name, e.g. {out / 'lra_summary.png'} "
                         f"(the HTML and the speed and memory charts are written beside it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create its folder ({e.strerror or e})") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lra.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="folder with runs.jsonl and bench.jsonl")
    parser.add_argument("--out", default=None, help="summary PNG (default: <results>/lra_summary.png)")
    parser.add_argument("--profile", default=None, help="runs of this profile (default: the most common)")
    parser.add_argument("--bench", default=None, help="bench rows of this preset (default: the longest lengths)")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper's points")
    args = parser.parse_args(argv)
    results_dir = Path(args.results)
    out = Path(args.out) if args.out else results_dir / "lra_summary.png"
    try:
        find_records(results_dir, args.profile)   # before check_out, which creates --out's folder
        check_out(out)
        drawn = plot(results_dir, out, profile=args.profile, bench=args.bench, paper=not args.no_paper)
    except (FileNotFoundError, ValueError) as e:   # no records, a malformed record line, nothing to plot
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # a chart that cannot be written (no permission, disk full)
        print(f"error: cannot write {e.filename or out.parent} ({e.strerror or e}); give --out a folder this "
              f"process can write", file=sys.stderr)
        return 1
    for p in drawn["points"]:
        print(f"{p['attention']:>12}  score {p['score']:6.2f}%  {p['examples_per_second']:9.3f} examples/s  "
              f"{p['memory_bytes'] / 2**30:6.2f} GiB")
    print(drawn["footnote"])
    print("wrote " + ", ".join(str(f) for f in drawn["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
