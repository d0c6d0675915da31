"""Records: atomic JSONL appends from concurrent writers, atomic JSON, malformed lines named."""
import json
import multiprocessing as mp

import pytest

from lra import results


def _writer(path, worker, count):
    for i in range(count):
        results.append_jsonl(path, {"worker": worker, "i": i, "payload": "x" * 5000})


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "runs.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = results.read_jsonl(path)
    assert len(records) == 160
    assert {(r["worker"], r["i"]) for r in records} == {(w, i) for w in range(4) for i in range(40)}


def test_write_json_atomic_and_read_errors(tmp_path):
    results.write_json_atomic(tmp_path / "a" / "result.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "result.json").read_text()) == {"x": 1}
    assert not list((tmp_path / "a").glob(".*tmp*"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        results.read_jsonl(bad)


def test_a_record_appended_after_a_cut_line_stays_readable(tmp_path):
    # An older writer left half a line (or a valid line without its newline): the next record starts a line of
    # its own, so deleting the broken line, as the error says, never deletes a finished result.
    path = tmp_path / "runs.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b"')
    results.append_jsonl(path, {"a": 3})
    with pytest.raises(ValueError, match="runs.jsonl:2: not a JSON record"):
        results.read_jsonl(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert results.read_jsonl(path) == [{"a": 1}, {"a": 3}]
    path.write_text('{"a": 1}')   # valid, but no final newline
    results.append_jsonl(path, {"a": 2})
    assert results.read_jsonl(path) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("content, match", [(b'{"a": 1}\n[1, 2]\n', "x.jsonl:2: a JSON list, not a record"),
                                            (b'{"a": 1}\n"text"\n', "x.jsonl:2: a JSON str, not a record"),
                                            (b'{"a": "\xff"}\n', "x.jsonl:1: not UTF-8 text")])
def test_lines_that_are_not_records_are_named(tmp_path, content, match):
    (tmp_path / "x.jsonl").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        results.read_jsonl(tmp_path / "x.jsonl")
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(ValueError, match="d.jsonl is a folder"):
        results.read_jsonl(tmp_path / "d.jsonl")


def test_cli_names_a_malformed_line(tmp_path, capsys):
    (tmp_path / "runs.jsonl").write_text('{"task": "listops"}\n\n{"task": \n')
    assert results.main(["--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "runs.jsonl:3: not a JSON record" in err and "fix or delete that line" in err


def test_runs_table_and_cli(tmp_path, capsys):
    record = {f: 0 for f in results.RECORD_FIELDS}
    record.update(task="listops", attention="full", profile="smoke", params=1234, test_accuracy=0.5,
                  best_val_accuracy=0.25, best_step=10, steps_per_second=3.0, device="cpu")
    results.append_jsonl(tmp_path / "runs.jsonl", record)
    assert results.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| listops | full | smoke | 0 | 1,234 | 50.00% | 25.00% (10) | 3.00 |" in out
    assert results.main(["--results", str(tmp_path / "none")]) == 1
    results.append_jsonl(tmp_path / "runs.jsonl", {**record, "attention": "linformer", "params_ratio": 1.04})
    assert results.main(["--results", str(tmp_path)]) == 0
    assert "| listops | linformer | smoke | 0 | 1,234 (1.04x full) |" in capsys.readouterr().out
    # A profile with no runs is named, and a README is left as it was rather than given empty tables.
    readme = tmp_path / "README.md"
    readme.write_text("untouched")
    assert results.main(["--results", str(tmp_path), "--profile", "smok", "--readme", str(readme)]) == 1
    assert "no runs of profile 'smok'" in capsys.readouterr().err and readme.read_text() == "untouched"
    assert results.main(["--results", str(tmp_path), "--profile", "smoke", "--summary"]) == 0


def test_readme_runs_table_is_generated_from_the_records():
    """The README's runs table is exactly what `python -m lra.results --readme README.md` writes."""
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    path = ROOT / "results" / "runs.jsonl"
    table = results.runs_table(results.read_jsonl(path)) if path.exists() else ""
    block = readme.split(results.README_START, 1)[1].split(results.README_END, 1)[0].strip()
    assert block == table.strip(), "run `python -m lra.results --readme README.md` after recording runs"
    block = readme.split(results.VARIANTS_START, 1)[1].split(results.VARIANTS_END, 1)[0].strip()
    assert block == results.variants_table().strip(), "run `python -m lra.results --readme README.md`"
    bench_path = ROOT / "results" / "bench.jsonl"
    rows = results.read_jsonl(bench_path) if bench_path.exists() else []
    block = readme.split(results.BENCH_START, 1)[1].split(results.BENCH_END, 1)[0].strip()
    assert block == results.bench_table(rows).strip(), "run `python -m lra.results --readme README.md`"


def test_bench_table_speedups():
    rows = [{"attention": "full", "length": 8, "batch_size": 2, "device": "cpu", "status": "ok",
             "steps_per_second": 2.0, "peak_memory_bytes": 2**21, "memory_method": "m"},
            {"attention": "local", "length": 8, "batch_size": 2, "device": "cpu", "status": "ok",
             "steps_per_second": 5.0, "peak_memory_bytes": 2**20, "memory_method": "m", "forward_ms": 50.0,
             "achieved_flops_per_second": 3e9},
            # Pallas rows are compared with full attention's XLA path, not with Pallas full.
            {"attention": "full", "impl": "pallas", "length": 8, "batch_size": 2, "device": "cpu", "status": "ok",
             "steps_per_second": 1.0, "peak_memory_bytes": 2**20, "memory_method": "m"},
            {"attention": "local", "impl": "pallas", "length": 8, "batch_size": 2, "device": "cpu", "status": "ok",
             "steps_per_second": 8.0, "peak_memory_bytes": 2**20, "memory_method": "m"},
            {"attention": "reformer", "length": 8, "batch_size": 2, "status": "oom"}]
    table = results.bench_table(rows)
    assert "| local | xla | 8 | 2 | 5.000 | 2.50x | 50 | 3.0 | 1 | m | cpu |" in table
    assert "| full | xla | 8 | 2 | 2.000 | 1.00x | - | - | 2 | m | cpu |" in table
    assert "| full | pallas | 8 | 2 | 1.000 | 0.50x |" in table
    assert "| local | pallas | 8 | 2 | 8.000 | 4.00x |" in table
    assert "| reformer | xla | 8 | 2 | oom |" in table


def test_replace_block():
    text = f"a\n{results.README_START}\nold\n{results.README_END}\nb"
    assert results.replace_block(text, "new") == f"a\n{results.README_START}\nnew\n{results.README_END}\nb"
    with pytest.raises(ValueError, match="markers"):
        results.replace_block("no markers", "x")


def config(max_length=1000, impl="xla", steps=20000, seed=0):
    return {"task": {"name": "text", "max_length": max_length}, "model": {"num_layers": 4},
            "attention": {"name": "full", "impl": impl}, "seed": seed,
            "train": {"train_steps": steps, "lr": 0.05, "progress": True}, "results_dir": "results"}


def text_run(acc, seed, **options):
    return {"task": "text", "attention": "full", "profile": "cpu", "seed": seed, "test_accuracy": acc,
            "config": config(seed=seed, **options)}


def test_runs_of_other_settings_are_kept_apart_and_named():
    # A second length, a Pallas run and a 10-step check with the same seeds used to replace the main runs.
    records = [text_run(0.64, 0), text_run(0.62, 1), text_run(0.70, 0, max_length=4000),
               text_run(0.50, 1, steps=10), text_run(0.40, 0, impl="pallas"),
               {**text_run(0.60, 0), "config": {**config(), "train": {**config()["train"], "progress": False}}}]
    latest = results.latest_per_seed(records)
    assert len(latest) == 5 and sorted(r["test_accuracy"] for r in latest.values()) == [0.4, 0.5, 0.6, 0.62, 0.7]
    setting = results.setting(records[0])
    assert results.main_settings(records) == {("text", "full", "cpu"): setting}    # two seeds
    table = results.summary_table(records).splitlines()
    assert table[0] == ("| task | attention | profile | impl | max length | seeds | test acc mean | std | steps/s | "
                        "differs from the main setting |")
    assert table[2] == "| text | full | cpu | xla | 1000 | 0,1 | 61.00% | 1.41 | - | - |"   # the main one first
    assert set(table[3:]) == {
        "| text | full | cpu | pallas | 1000 | 0 | 40.00% | - | - | attention.impl: 'xla' -> 'pallas' |",
        "| text | full | cpu | xla | 4000 | 0 | 70.00% | - | - | task.max_length: 1000 -> 4000 |",
        "| text | full | cpu | xla | 1000 | 1 | 50.00% | - | - | train.train_steps: 20000 -> 10 |"}
    # A tie in seeds goes to the most recent record; a record without a config falls back to its own fields.
    tie = [text_run(0.7, 0, max_length=4000), text_run(0.6, 0)]
    assert results.main_settings(tie)[("text", "full", "cpu")] == results.setting(tie[1])
    old = [{"task": "text", "attention": "full", "profile": "cpu", "seed": 0, "test_accuracy": a, **extra}
           for a, extra in [(0.5, {}), (0.6, {}), (0.7, {"max_length": 4000})]]
    assert len(results.latest_per_seed(old)) == 2                          # the two without max_length: one
    assert "| - | - | 0 | 60.00% | - | - | max_length: 4000 -> '<absent>' |" in results.summary_table(old)


def test_setting_diff_is_short_and_a_string_seed_sorts():
    rows = [{"task": "listops", "attention": "full", "profile": "cpu", "seed": s, "test_accuracy": 0.3}
            for s in (10, "1", 2, None)]
    assert "| 2,10,1,None |" in results.summary_table(rows)   # used to raise TypeError (str < int)
    many = {**config(), "model": {"num_layers": 1, "emb_dim": 8, "num_heads": 1, "mlp_dim": 9}}
    cell = results.setting_diff(results.setting({"config": config()}), results.setting({"config": many}))
    assert cell.count(";") == 2 and cell.endswith("(+1 more)")
    assert results.setting_diff(results.setting({"config": config()}), results.setting({})) == "no config recorded"


def test_speedup_baseline_shares_model_and_dtype():
    def row(attention, sps, impl="xla", layers=4, dtype="float32", preset="cpu"):
        return {"attention": attention, "impl": impl, "length": 8, "batch_size": 2, "device": "cpu", "status": "ok",
                "steps_per_second": sps, "model": {"num_layers": layers}, "dtype": dtype, "bench": preset}

    rows = [row("full", 2.0), row("local", 5.0), row("local", 6.0, impl="pallas", preset="cpu_pallas"),
            row("full", 8.0, layers=1),        # a later ad hoc check of another model: not the baseline
            row("local", 4.0, dtype="bfloat16")]
    table = results.bench_table(rows)
    assert "| local | xla | 8 | 2 | 5.000 | 2.50x |" in table
    assert "| local | pallas | 8 | 2 | 6.000 | 3.00x |" in table       # cpu_pallas compares with cpu's full
    assert "| full | xla | 8 | 2 | 8.000 | 1.00x |" in table
    assert "| local | xla | 8 | 2 | 4.000 | - |" in table               # no full row in bfloat16


def test_summary_with_readme_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "README.md").write_text("untouched")
    monkeypatch.setattr(results, "read_jsonl", lambda *a: pytest.fail("read the records first"))
    assert results.main(["--results", str(tmp_path), "--summary", "--readme", str(tmp_path / "README.md")]) == 1
    assert "give one of them" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == "untouched"


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    (f"{results.README_END}\n{results.README_START}\n{results.VARIANTS_START}\n{results.VARIANTS_END}\n"
     f"{results.BENCH_START}\n{results.BENCH_END}", f"{results.README_END} comes before {results.README_START}"),
    (f"{results.README_START}\n{results.README_END}\n{results.BENCH_START}\n",
     f"{results.VARIANTS_START} and {results.VARIANTS_END} missing; {results.BENCH_END} missing"),
])
def test_readme_errors_name_the_file_and_markers(tmp_path, capsys, text, message):
    results.append_jsonl(tmp_path / "runs.jsonl", {"task": "listops", "attention": "full", "test_accuracy": 0.5})
    readme = tmp_path / "README.md"
    if text is not None:
        readme.write_text(text)
    assert results.main(["--results", str(tmp_path), "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(readme) in err and message in err
    assert (readme.read_text() == text) if text is not None else not readme.exists()
    with pytest.raises(ValueError, match="comes before"):
        results.replace_block(f"{results.README_END} {results.README_START}", "x")


def test_unreadable_records_and_readme_are_named(tmp_path, capsys, monkeypatch):
    results.append_jsonl(tmp_path / "runs.jsonl", {"task": "listops", "attention": "full", "test_accuracy": 0.5})

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(results, "open", denied, raising=False)   # as root, chmod would not stop the read
    with pytest.raises(ValueError, match="cannot read .*runs.jsonl .Permission denied"):
        results.read_jsonl(tmp_path / "runs.jsonl")
    assert results.main(["--results", str(tmp_path)]) == 1
    assert "Permission denied" in capsys.readouterr().err
    monkeypatch.undo()
    readme = tmp_path / "README.md"
    readme.write_text("".join(f"{a}\nold\n{b}\n" for a, b in results.MARKERS))
    monkeypatch.setattr(results.os, "replace", denied)
    assert results.main(["--results", str(tmp_path), "--readme", str(readme)]) == 1
    assert "cannot write" in capsys.readouterr().err and readme.read_text().count("old") == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
