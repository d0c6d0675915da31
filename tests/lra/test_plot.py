"""lra.plot: scores and speeds are taken from the records as documented, and every figure is written."""
import json

import pytest

from lra import plot


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(task, attention, acc, seed=0, profile="cpu"):
    return {"task": task, "attention": attention, "test_accuracy": acc, "seed": seed, "profile": profile}


def bench(attention, length, sps, memory, status="ok", batch=4, preset="cpu"):
    return {"attention": attention, "length": length, "batch_size": batch, "steps_per_second": sps,
            "examples_per_second": sps and sps * batch, "peak_memory_bytes": memory, "memory_method": "compiled",
            "device": "cpu: test", "status": status, "bench": preset}


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
    assert listops["local"][0] == pytest.approx(15.82) and listops["local"][1] == pytest.approx(7.4 * 32)
    assert plot.paper_points([])["full"][0] == pytest.approx((36.37 + 64.27 + 57.46 + 42.44 + 71.40) / 5)


def test_missing_records_say_what_writes_them(tmp_path, capsys):
    assert plot.main(["--results", str(tmp_path)]) == 1
    assert "python -m lra.bench" in capsys.readouterr().out


def test_malformed_record_line_is_named_not_a_traceback(tmp_path, capsys):
    (tmp_path / "runs.jsonl").write_text('{"task": "listops"}\n{"task": \n')
    (tmp_path / "bench.jsonl").write_text("")
    assert plot.main(["--results", str(tmp_path)]) == 1
    assert "runs.jsonl:2: not a JSON record" in capsys.readouterr().out
