"""lra.plot: scores and speeds are taken from the records as documented, and every figure is written."""
import json

import pytest

from lra import plot


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(task, attention, acc, seed=0, profile="cpu"):
    return {"task": task, "attention": attention, "test_accuracy": acc, "seed": seed, "profile": profile}


def bench(attention, length, sps, memory, status="ok", batch=4, preset="cpu", **fields):
    return {"attention": attention, "length": length, "batch_size": batch, "steps_per_second": sps,
            "examples_per_second": sps and sps * batch, "peak_memory_bytes": memory, "memory_method": "compiled",
            "device": "cpu: test", "status": status, "bench": preset, **fields}


@pytest.fixture
def results(tmp_path):
    write(tmp_path / "runs.jsonl", [
        run("listops", "full", 0.40), run("listops", "full", 0.30, seed=1), run("text", "full", 0.70),
        run("listops", "local", 0.20), run("listops", "linear", 0.36), run("listops", "linear", 0.9, profile="lra"),
    ])
    write(tmp_path / "bench.jsonl", [
        bench("full", 1024, 1.0, 2**30), bench("local", 1024, 2.0, 2**29), bench("linear", 1024, 2.5, 2**29),
        bench("full", 4096, 0.1, 8 * 2**30), bench("local", 4096, 0.5, 2**30), bench("performer", 4096, 0.6, 2**30),
        bench("linear", 4096, None, None, status="oom"),
    ])
    return tmp_path


def test_scores_average_seeds_over_the_common_tasks(results):
    score, tasks, profile = plot.scores(plot.results_lib.read_jsonl(results / "runs.jsonl"))
    assert profile == "cpu" and tasks == ["listops"]          # text only has full: not common to every variant
    assert score == pytest.approx({"full": 35.0, "local": 20.0, "linear": 36.0})


def test_plot_draws_the_longest_length_and_writes_every_file(results):
    out = results / "charts" / "summary.png"
    drawn = plot.plot(results, out)
    assert drawn["length"] == 4096
    assert {p["attention"]: p["examples_per_second"] for p in drawn["points"]} == {"full": 0.4, "local": 2.0}
    assert "linear" in drawn["footnote"] and "performer" in drawn["footnote"]   # said, not guessed
    for f in drawn["files"]:
        assert f.exists() and f.stat().st_size > 1000
    page = out.with_suffix(".html").read_text()
    assert page.count("<circle") == 2 + len(plot.PAPER_SPEED_4K) and "paper: bigbird" in page
    assert "0.400 examples/s" in page                          # hover text carries the numbers
    no_paper = plot.plot(results, results / "np.png", paper=False)
    assert (results / "np.html").read_text().count("<circle") == len(no_paper["points"]) == 2


def test_paper_points_follow_the_tasks():
    listops = plot.paper_points(["listops"])
    # The paper's "Local Attention" (non-overlapping blocks of 50) is block_local, not the sliding window.
    assert listops["block_local"][0] == pytest.approx(15.82) and listops["block_local"][1] == pytest.approx(7.4 * 32)
    assert "local" not in listops and "local" not in plot.PAPER_ACCURACY
    assert plot.paper_points([])["full"][0] == pytest.approx((36.37 + 64.27 + 57.46 + 42.44 + 71.40) / 5)


def test_missing_records_say_what_writes_them(tmp_path, capsys):
    assert plot.main(["--results", str(tmp_path)]) == 1
    assert "python -m lra.bench" in capsys.readouterr().err


def test_malformed_record_line_is_named_not_a_traceback(tmp_path, capsys):
    (tmp_path / "runs.jsonl").write_text('{"task": "listops"}\n{"task": \n')
    (tmp_path / "bench.jsonl").write_text("")
    assert plot.main(["--results", str(tmp_path)]) == 1
    assert "runs.jsonl:2: not a JSON record" in capsys.readouterr().err


def disjoint(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_place_labels_keeps_crowded_labels_apart_and_inside():
    # Six bubbles on one spot and two beside it: every label finds a box of its own, clear of every bubble.
    anchors = [(100.0, 100.0)] * 6 + [(112.0, 100.0), (400.0, 300.0)]
    sizes = [(40.0, 10.0)] * 8
    radii = [8.0] * 8
    bounds = (0.0, 0.0, 500.0, 400.0)
    circles = [(x, y, r) for (x, y), r in zip(anchors, radii)]
    boxes, far = plot.place_labels(anchors, sizes, radii, bounds, obstacles=circles)
    for i, a in enumerate(boxes):
        assert a[2] - a[0] == pytest.approx(40.0) and a[3] - a[1] == pytest.approx(10.0)
        assert bounds[0] <= a[0] and a[2] <= bounds[2] and bounds[1] <= a[1] and a[3] <= bounds[3]
        assert all(disjoint(a, b) for b in boxes[i + 1:])
        assert not any(plot._hits_circle(a, c) for c in circles)
    assert far[0] is False and any(far)                 # the first sits next to its bubble, later ones further
    assert boxes[0][1] == pytest.approx(100.0 + 8.0 + 3.0)  # above its bubble when that is free
    # A label is never pushed out of the frame: at the top edge it goes below.
    (box,), _ = plot.place_labels([(250.0, 395.0)], [(40.0, 10.0)], [5.0], bounds)
    assert box[3] <= 400.0 and box[1] < 395.0
    # Boxes already taken are avoided too.
    (box,), _ = plot.place_labels([(100.0, 100.0)], [(40.0, 10.0)], [8.0], bounds, taken=[boxes[0]])
    assert disjoint(box, boxes[0])


def test_chart_labels_do_not_overlap(tmp_path):
    # Ten variants crowded into a corner, as the real records are: the labels as drawn (the PNG's text boxes
    # measured by matplotlib, and the HTML's estimated boxes) overlap neither each other nor leave the axes.
    names = ["full", "local", "linear", "performer", "sinkhorn", "mixed_heads", "linformer", "block_local",
             "global", "routing"]
    write(tmp_path / "runs.jsonl", [run("listops", n, 0.37 + 0.002 * i) for i, n in enumerate(names)])
    write(tmp_path / "bench.jsonl", [bench(n, 4096, 0.20 + 0.01 * i, 2**29) for i, n in enumerate(names)])
    drawn = plot.plot(tmp_path, tmp_path / "summary.png")
    labels = drawn["labels"]
    assert sorted(t for t, _ in labels) == sorted(names + list(plot.PAPER_SPEED_4K))
    for i, (_, a) in enumerate(labels):
        assert all(disjoint(a, b) for _, b in labels[i + 1:]), labels
    page = (tmp_path / "summary.html").read_text()
    import re
    texts = re.findall(r'<text x="([\d.]+)" y="([\d.]+)" text-anchor="middle" dominant-baseline="central" '
                       r'style="font-size:(\d+)px[^"]*">([^<]+)</text>', page)
    assert sorted(t[3] for t in texts) == sorted(names + list(plot.PAPER_SPEED_4K))
    boxes = [(float(x) - 0.31 * int(f) * len(n), float(y) - 0.62 * int(f), float(x) + 0.31 * int(f) * len(n),
              float(y) + 0.62 * int(f)) for x, y, f, n in texts]
    for i, a in enumerate(boxes):
        assert all(disjoint(a, b) for b in boxes[i + 1:])


def test_a_profile_or_preset_that_was_not_recorded_is_named(results, capsys):
    # A typo used to draw an empty chart; now the command says which profiles and presets the records hold.
    assert plot.main(["--results", str(results), "--profile", "cpux"]) == 1
    assert "no runs of profile 'cpux'" in capsys.readouterr().err and not (results / "lra_summary.png").exists()
    assert plot.main(["--results", str(results), "--bench", "gpu"]) == 1
    assert "no ok rows of bench preset 'gpu'" in capsys.readouterr().err
    assert plot.main(["--results", str(results), "--profile", "lra", "--bench", "cpu"]) == 0


def test_reruns_nulls_and_older_records_are_drawn_like_the_tables_read_them(results, capsys):
    runs = plot.results_lib.read_jsonl(results / "runs.jsonl")
    # A rerun of seed 0 replaces it (as in lra.results --summary); a NaN or missing accuracy counts for nothing.
    runs += [run("listops", "full", 0.10), run("listops", "local", float("nan"), seed=1),
             {"task": "listops", "attention": "local", "seed": 2, "profile": "cpu"}]
    write(results / "runs.jsonl", runs)
    score, _, _ = plot.scores(plot.results_lib.read_jsonl(results / "runs.jsonl"))
    assert score == pytest.approx({"full": 20.0, "local": 20.0, "linear": 36.0})
    assert "20.00%" in plot.results_lib.summary_table(runs)
    # Bench rows without a speed or memory (null, an older format) are left out, not a traceback.
    rows = plot.results_lib.read_jsonl(results / "bench.jsonl")
    rows += [bench("sparse", 4096, None, 2**30), {**bench("bigbird", 4096, 0.3, 2**30), "peak_memory_bytes": None},
             {k: v for k, v in bench("reformer", 4096, 0.3, 2**30).items() if k != "examples_per_second"}]
    write(results / "bench.jsonl", rows)
    assert plot.main(["--results", str(results), "--out", str(results / "c" / "s.png")]) == 0
    out = capsys.readouterr().out
    assert all(name not in out.split("no bench row")[0] for name in ("sparse", "bigbird", "reformer"))
    assert "| sparse | xla | 4096 | 4 | - |" in plot.results_lib.bench_table(rows)
    table = plot.results_lib.runs_table(runs)
    assert table.count("| - |") >= 1 and "nan" not in table


@pytest.mark.parametrize("out, why", [("folder", "give the summary PNG's file name"),
                                      ("summary", "give the summary PNG's file name"),
                                      ("a_file/s.png", "cannot create its folder")])
def test_an_out_path_that_cannot_be_written_is_refused_before_drawing(results, capsys, monkeypatch, out, why):
    (results / "folder").mkdir()
    (results / "a_file").write_text("")
    monkeypatch.setattr(plot, "plot", lambda *a, **k: pytest.fail("drew first"))
    assert plot.main(["--results", str(results), "--out", str(results / out)]) == 1
    assert why in capsys.readouterr().err


def test_scores_take_the_main_setting_and_say_the_others_were_left_out(tmp_path):
    # A 4K-token run and a 10-step check with the same seeds used to replace the 1K runs in the score.
    def text(acc, seed, max_length=1000, steps=20000):
        return {**run("text", "full", acc, seed=seed), "config": {"task": {"max_length": max_length},
                                                                "train": {"train_steps": steps}, "seed": seed}}

    runs = [text(0.64, 0), text(0.62, 1), text(0.70, 0, max_length=4000), text(0.50, 1, steps=10)]
    assert plot.scores(runs) == ({"full": pytest.approx(63.0)}, ["text"], "cpu")
    write(tmp_path / "runs.jsonl", runs)
    write(tmp_path / "bench.jsonl", [bench("full", 4096, 0.1, 2**30)])
    drawn = plot.plot(tmp_path, tmp_path / "s.png", paper=False)
    assert drawn["points"][0]["score"] == pytest.approx(63.0)
    assert "runs of other settings left out: full" in drawn["footnote"]


def test_rows_of_another_impl_dtype_or_model_are_not_mixed(tmp_path):
    m4, m1 = {"num_layers": 4}, {"num_layers": 1}
    rows = [bench("full", 1024, 1.0, 2**30, model=m4), bench("local", 1024, 2.0, 2**29, model=m4),
            bench("full", 4096, 0.1, 8 * 2**30, model=m4), bench("local", 4096, 0.5, 2**30, model=m4),
            {**bench("local", 4096, 0.9, 2**30, model=m4), "impl": "pallas"},      # python -m lra.bench impl=pallas
            bench("full", 1024, 4.0, 2**28, model=m1),                              # model.num_layers=1
            {**bench("full", 1024, 3.0, 2**28, model=m4), "dtype": "bfloat16"}]
    groups = plot.bench_groups(rows)
    assert len(groups) == 3
    main = plot.pick_group(groups, None, key=lambda rs: (len({r["length"] for r in rs}), len(rs)))
    assert plot.series_names(groups[main]) == {("full", "xla"): "full", ("local", "xla"): "local",
                                               ("local", "pallas"): "local (pallas)"}
    length, at = plot.speeds_at_longest(groups[main])
    assert {k: r["steps_per_second"] for k, r in at.items()} == {"full": 0.1, "local": 0.5, "local (pallas)": 0.9}
    # A Pallas-only series keeps the variant's name, so that its runs' score joins it.
    assert plot.series_names([{**rows[0], "impl": "pallas"}]) == {("full", "pallas"): "full"}
    write(tmp_path / "runs.jsonl", [run("listops", "full", 0.4), run("listops", "local", 0.2)])
    write(tmp_path / "bench.jsonl", rows)
    curves = []
    import matplotlib.axes
    original = matplotlib.axes.Axes.plot

    def spy(self, x, y, *a, **k):
        curves.append((k.get("label"), list(x), list(y)))
        return original(self, x, y, *a, **k)

    matplotlib.axes.Axes.plot = spy
    try:
        drawn = plot.plot(tmp_path, tmp_path / "s.png", paper=False)
    finally:
        matplotlib.axes.Axes.plot = original
    assert {p["attention"]: p["steps_per_second"] for p in drawn["points"]} == {"full": 0.1, "local": 0.5}
    assert "in the curves only: local (pallas)" in drawn["footnote"]
    assert ("full", [1024, 4096], [1.0, 0.1]) in curves and ("local (pallas)", [4096], [0.9]) in curves
    assert len(curves) == 6                                              # three series, two charts


def test_common_tasks_are_those_of_the_plotted_variants(tmp_path):
    # linformer has runs of another task but no bench row: it used to empty everyone's task set.
    write(tmp_path / "runs.jsonl", [run("listops", "full", 0.4), run("text", "full", 0.6), run("listops", "local", 0.2),
                                    run("text", "local", 0.8), run("retrieval", "linformer", 0.5)])
    write(tmp_path / "bench.jsonl", [bench("full", 4096, 0.1, 8 * 2**30), bench("local", 4096, 0.5, 2**30)])
    drawn = plot.plot(tmp_path, tmp_path / "s.png", paper=False)
    assert drawn["tasks"] == ["listops", "text"] and len(drawn["points"]) == 2
    assert "no bench row at length 4096: linformer" in drawn["footnote"]
    assert "no run" not in drawn["footnote"]
    # Plotted variants with no task in common: the footnote says so, not "no run".
    write(tmp_path / "runs.jsonl", [run("listops", "full", 0.4), run("text", "local", 0.8)])
    drawn = plot.plot(tmp_path, tmp_path / "s.png", paper=False)
    assert drawn["points"] == [] and "no task that every benchmarked variant has a run of (full: listops; " \
        "local: text)" in drawn["footnote"] and "no run" not in drawn["footnote"]


def test_failed_rows_are_named_by_status_and_nothing_to_plot_is_an_error(results, capsys):
    rows = plot.results_lib.read_jsonl(results / "bench.jsonl") + [bench("local", 4096, None, None, status="error")]
    write(results / "bench.jsonl", rows[:4] + rows[5:])                 # local's ok row at 4K gives way to an error
    drawn = plot.plot(results, results / "s.png")
    assert "oom at length 4096: linear" in drawn["footnote"] and "error at length 4096: local" in drawn["footnote"]
    assert "no bench row" not in drawn["footnote"]
    charts = {f: f.read_bytes() for f in drawn["files"]}
    for content in ([], [bench("full", 4096, None, None, status="oom"), bench("local", 4096, None, None, "error")]):
        write(results / "bench.jsonl", content)
        assert plot.main(["--results", str(results), "--out", str(results / "s.png")]) == 1
        assert "error: nothing to plot" in capsys.readouterr().err
        assert {f: f.read_bytes() for f in drawn["files"]} == charts       # left as they were


def test_a_results_folder_that_does_not_exist_is_not_created(tmp_path, capsys):
    assert plot.main(["--results", str(tmp_path / "typo")]) == 1
    assert "no records to plot" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_bench_only_draws_the_curves(tmp_path, capsys):
    write(tmp_path / "bench.jsonl", [bench("full", 1024, 1.0, 2**30), bench("full", 4096, 0.1, 2**32)])
    assert plot.main(["--results", str(tmp_path)]) == 0
    assert "no summary chart" in capsys.readouterr().out
    assert (tmp_path / "lra_speed_vs_length.png").exists() and not (tmp_path / "lra_summary.png").exists()


def test_ties_between_groups_do_not_depend_on_file_order():
    pallas = [{**bench(n, 4096, 1.0, 2**30, preset="cpu_pallas"), "impl": "pallas"} for n in ("full", "local")]
    xla = [bench(n, 4096, 0.5, 2**30) for n in ("full", "local")]
    for rows in (pallas + xla, xla + pallas):
        groups = plot.bench_groups(rows)
        assert plot.pick_group(groups, None, key=lambda rs: max(r["length"] for r in rs))[0] == "cpu"
    more = pallas + [{**pallas[0], "attention": "linear"}] + xla                # more variants come first
    assert plot.pick_group(plot.bench_groups(more), None, key=lambda rs: 4096)[0] == "cpu_pallas"


def test_paper_values_and_colours_say_what_they_are(tmp_path):
    names = [f"v{i}" for i in range(18)]
    write(tmp_path / "runs.jsonl", [run("pathx", n, 0.5 + 0.01 * i) for i, n in enumerate(names)])
    write(tmp_path / "bench.jsonl", [bench(n, 4096, 0.1 * (i + 1), 2**29) for i, n in enumerate(names)])
    plot.plot(tmp_path, tmp_path / "s.png")
    page = (tmp_path / "s.html").read_text()
    assert "mean over pathx" not in page and "five-task average; no pathx in Table 1" in page
    assert "#7f7f7f" not in page and "#c7c7c7" not in page               # tab20's greys: the paper's look
    assert "five-task average" in plot.paper_y(["pathx"]) and plot.paper_y(["listops"]) == "mean over listops"


def test_a_chart_that_cannot_be_written_is_named(results, capsys, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(results / "lra_summary.png"))

    monkeypatch.setattr(plot, "draw_summary", denied)
    assert plot.main(["--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "lra_summary.png" in err and "Permission denied" in err
    monkeypatch.setattr(plot.results_lib, "open", denied, raising=False)
    assert plot.main(["--results", str(results)]) == 1
    assert "cannot read" in capsys.readouterr().err
