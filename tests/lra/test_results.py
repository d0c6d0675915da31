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
