"""ListOps (Long Range Arena, Tay et al. 2021): generator, tokenizer, TSV reader and CLI.

An expression is a tree of operators over digits, e.g. ``( [MAX 2 9 ( [MIN 4 7 ] ) 0 ] )`` whose value
is 9. Operators: ``[MIN``, ``[MAX``, ``[MED`` (int of the median), ``[SM`` (sum modulo 10).

Files are TSV with an optional header line ``Source\\tTarget`` and rows ``<expression>\\t<label>``,
named ``basic_{train,val,test}.tsv`` like the official release (``lra_release/listops-1000/``).
The official strings wrap operator/argument pairs in extra parentheses; parentheses carry no
information and are dropped by the tokenizer, so both forms read the same.

Vocabulary (fixed)::

    0 <pad>   1 [MIN   2 [MAX   3 [MED   4 [SM   5 ]   6..15 digits 0..9

The closing ``]`` is a real token: without it the tree structure (and so the label) is lost.

Generate the standard sizes with::

    python -m lra.data.listops --out data/listops --num-train 96000 --num-val 2000 --num-test 2000 \\
        --min-length 500 --max-length 2000 --seed 0
"""

from __future__ import annotations

import argparse
import inspect
import logging
import numbers
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import _common

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- vocabulary

PAD_ID = 0
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
VOCAB = {"[MIN": 1, "[MAX": 2, "[MED": 3, "[SM": 4, "]": 5, **{d: 6 + int(d) for d in DIGITS}}
VOCAB_SIZE = 16
ID_TO_TOKEN = {v: k for k, v in VOCAB.items()} | {PAD_ID: "<pad>"}

SPLITS = ("train", "val", "test")
HEADER = "Source\tTarget"

# Generation hyper-parameters of the LRA release.
OP_PROB = 0.25
MAX_DEPTH = 10
MAX_ARGS = 10
DEFAULTS = {"num_train": 96_000, "num_val": 2_000, "num_test": 2_000, "min_length": 500, "max_length": 2_000, "seed": 0}


def split_filename(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown ListOps split {split!r}; valid splits: {', '.join(SPLITS)}")
    return f"basic_{split}.tsv"


# --------------------------------------------------------------------------- evaluation


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s = sorted(args)
        n = len(s)
        # int(np.median(args)): the mean of the two middle values for even n, truncated (values >= 0).
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown operator {op!r}")


def evaluate(expression: str) -> int:
    """Value (0..9) of a ListOps expression; parentheses are ignored."""
    stack: list[list] = [[None]]  # frames: [operator, arg, arg, ...]; the bottom frame holds the result
    for tok in expression.split():
        if tok in ("(", ")"):
            continue
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            if len(stack) < 2:
                raise ValueError(f"unbalanced ']' in expression: {expression[:80]!r}")
            frame = stack.pop()
            if len(frame) < 2:
                raise ValueError(f"operator {frame[0]} without arguments in {expression[:80]!r}")
            stack[-1].append(_apply(frame[0], frame[1:]))
        elif tok in DIGITS:
            stack[-1].append(int(tok))
        else:
            raise ValueError(f"unknown token {tok!r} in expression {expression[:80]!r}")
    if len(stack) != 1 or len(stack[0]) != 2:
        raise ValueError(f"malformed expression (unclosed operator or not exactly one value): {expression[:80]!r}")
    return stack[0][1]


def expression_length(expression: str) -> int:
    """Length as LRA counts it: leaves + operators + closing brackets (parentheses excluded)."""
    return sum(1 for tok in expression.split() if tok not in ("(", ")"))


# --------------------------------------------------------------------------- generation


class _TooLong(Exception):
    pass


def _sample(rng: random.Random, max_depth: int, max_args: int, max_length: int) -> list[str] | None:
    """One draw from the LRA tree distribution as a token list, or None once its length reaches max_length.

    Rejection sampling keeps a tree only if min_length < length < max_length. Length only grows while
    a tree is built, so a tree whose partial length already reaches max_length would be rejected anyway:
    aborting it early changes nothing about the distribution of accepted trees (every attempt still
    starts from fresh random draws) and saves most of the time spent on huge trees.
    """
    out: list[str] = []
    length = 0
    rand, randint, choice = rng.random, rng.randint, rng.choice

    def node(depth: int) -> None:
        nonlocal length
        # Operator with probability OP_PROB below max_depth; a leaf at max_depth.
        if depth < max_depth and rand() < OP_PROB:
            length += 2  # the operator token and its closing ']'
            if length >= max_length:
                raise _TooLong
            n_args = randint(2, max_args)
            out.append("(")
            out.append(choice(OPERATORS))
            for _ in range(n_args):
                node(depth + 1)
            out.append(END)
            out.append(")")
        else:
            length += 1
            if length >= max_length:
                raise _TooLong
            out.append(choice(DIGITS))

    try:
        node(1)
    except _TooLong:
        return None
    return out


def generate(
    num_examples: int,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    seed: int = 0,
    max_depth: int = MAX_DEPTH,
    max_args: int = MAX_ARGS,
    progress: bool = False,
) -> list[tuple[str, int]]:
    """``num_examples`` distinct (expression, label) pairs with min_length < length < max_length.

    Deterministic for a given seed and arguments.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if not 0 <= min_length < max_length - 1:
        raise ValueError(f"need 0 <= min_length < max_length - 1, got min_length={min_length}, max_length={max_length}")
    if max_depth < 1 or max_args < 2:
        raise ValueError(f"need max_depth >= 1 and max_args >= 2, got {max_depth}, {max_args}")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, int]] = []
    attempts_since_new = 0
    next_report = time.monotonic() + 10.0
    while len(rows) < num_examples:
        toks = _sample(rng, max_depth, max_args, max_length)
        attempts_since_new += 1
        if toks is not None:
            length = len(toks) - 2 * toks.count("(")
            if length > min_length:
                expr = " ".join(toks)
                if expr not in seen:
                    seen.add(expr)
                    rows.append((expr, evaluate(expr)))
                    attempts_since_new = 0
        if attempts_since_new > 20_000_000:
            raise RuntimeError(
                f"no new distinct expression in 20M attempts after {len(rows)} examples; "
                f"the range {min_length} < length < {max_length} is too narrow for {num_examples} examples"
            )
        if progress and attempts_since_new == 0 and time.monotonic() > next_report:
            print(f"  generated {len(rows)}/{num_examples}", file=sys.stderr, flush=True)
            next_report = time.monotonic() + 10.0
    return rows


def generate_splits(
    num_train: int,
    num_val: int,
    num_test: int,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    seed: int = 0,
    max_depth: int = MAX_DEPTH,
    max_args: int = MAX_ARGS,
    progress: bool = False,
) -> dict[str, list[tuple[str, int]]]:
    """One deduplicated pool split into train/val/test, so no expression appears in two splits."""
    pool = generate(
        num_train + num_val + num_test,
        min_length=min_length,
        max_length=max_length,
        seed=seed,
        max_depth=max_depth,
        max_args=max_args,
        progress=progress,
    )
    return {
        "train": pool[:num_train],
        "val": pool[num_train : num_train + num_val],
        "test": pool[num_train + num_val :],
    }


# --------------------------------------------------------------------------- files


def write_tsv(path: str | os.PathLike, rows) -> None:
    """Write ``Source\\tTarget`` TSV atomically (temporary file in the same folder, then os.replace)."""
    with _common.atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as f:
        f.write(HEADER + "\n")
        for expr, label in rows:
            f.write(f"{expr}\t{int(label)}\n")


# Fast tokenizer: operator words become single placeholder bytes, then a well-formed line is
# "t t t ... t" (single-byte tokens separated by single spaces), checked and mapped with numpy.
_PLACEHOLDERS = ((b"[MIN", b"\x01"), (b"[MAX", b"\x02"), (b"[MED", b"\x03"), (b"[SM", b"\x04"))
_PAREN = 16
_LUT = np.full(256, -1, dtype=np.int16)
for _i in range(1, 5):
    _LUT[_i] = _i
_LUT[ord("]")] = VOCAB["]"]
for _d in range(10):
    _LUT[ord("0") + _d] = 6 + _d
_LUT[ord("(")] = _PAREN
_LUT[ord(")")] = _PAREN
_SPACE = ord(" ")


def _tokenize_fast(raw: bytes) -> np.ndarray | None:
    """uint8 ids of an expression, or None when the fast path cannot decide (then use the slow path)."""
    raw = raw.strip(b" ")
    if not raw:
        return np.zeros(0, np.uint8)
    if b"\x01" in raw or b"\x02" in raw or b"\x03" in raw or b"\x04" in raw:
        return None
    for word, ph in _PLACEHOLDERS:
        raw = raw.replace(word, ph)
    arr = np.frombuffer(raw, dtype=np.uint8)
    if arr.size % 2 == 0 or not (arr[1::2] == _SPACE).all():
        return None
    codes = _LUT[arr[0::2]]
    if (codes < 0).any():
        return None
    return codes[codes != _PAREN].astype(np.uint8)


def _tokenize_slow(text: str) -> np.ndarray:
    ids = []
    for tok in text.split():
        if tok in ("(", ")"):
            continue
        try:
            ids.append(VOCAB[tok])
        except KeyError:
            raise ValueError(f"unknown token {tok!r} (vocabulary: ( ) {' '.join(VOCAB)})") from None
    return np.asarray(ids, dtype=np.uint8)


def tokenize(expression: str | bytes) -> np.ndarray:
    """int32 token ids of an expression (parentheses dropped, ``]`` kept). Unknown token -> ValueError."""
    raw = expression.encode("utf-8") if isinstance(expression, str) else bytes(expression)
    ids = _tokenize_fast(raw)
    if ids is None:
        ids = _tokenize_slow(raw.decode("utf-8", errors="replace"))
    return ids.astype(np.int32)


def detokenize(ids) -> str:
    return " ".join(ID_TO_TOKEN[int(i)] for i in ids if int(i) != PAD_ID)


def read_tsv(path: str | os.PathLike, max_length: int) -> dict[str, np.ndarray]:
    """Read a ListOps TSV into ``inputs`` int32 [N, max_length] (0-padded, truncated), ``targets`` and
    ``lengths`` int32 [N]. The ``Source\\tTarget`` header is optional; empty lines are skipped.
    A malformed row raises ValueError naming the file and its 1-based line number."""
    return _read_tsv(path, max_length)[0]


def _read_tsv(path: str | os.PathLike, max_length: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """read_tsv's arrays and the int64 [N] token counts of the expressions before truncation."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    path = Path(path)
    seqs: list[np.ndarray] = []
    targets: list[int] = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if lineno == 1 and line.strip() == HEADER.encode():
                continue

            def bad(what: str, lineno=lineno):
                return ValueError(f"{path}:{lineno}: malformed ListOps row: {what}")

            cols = line.split(b"\t")
            if len(cols) != 2:
                raise bad(f"expected 2 tab-separated columns (expression, label), got {len(cols)}")
            expr, label = cols
            try:
                target = int(label.strip())
            except ValueError:
                raise bad(f"label {label.decode(errors='replace')!r} is not an integer") from None
            if not 0 <= target <= 9:
                raise bad(f"label {target} is outside 0..9")
            ids = _tokenize_fast(expr)
            if ids is None:
                try:
                    ids = _tokenize_slow(expr.decode("utf-8", errors="replace"))
                except ValueError as e:
                    raise bad(str(e)) from None
            if ids.size == 0:
                raise bad("empty expression")
            seqs.append(ids)
            targets.append(target)
    n = len(seqs)
    inputs = np.zeros((n, max_length), dtype=np.int32)
    full = np.fromiter((s.size for s in seqs), dtype=np.int64, count=n)
    lengths = np.minimum(full, max_length).astype(np.int32)
    for i, seq in enumerate(seqs):
        inputs[i, : lengths[i]] = seq[:max_length]
    arrays = {"inputs": inputs, "targets": np.asarray(targets, dtype=np.int32).reshape(n), "lengths": lengths}
    return arrays, full


# --------------------------------------------------------------------------- cached generation / loading


def generated_dir(data_dir, *, num_train, num_val, num_test, min_length, max_length, seed) -> Path:
    name = f"generated-n{num_train}-{num_val}-{num_test}-len{min_length}-{max_length}-seed{seed}"
    return Path(data_dir) / "listops" / name


def _complete(folder: Path) -> bool:
    return all((folder / split_filename(s)).is_file() for s in SPLITS)


def write_splits(out: str | os.PathLike, splits: dict[str, list[tuple[str, int]]]) -> None:
    """Write the three TSVs: each into a temporary file first, then the three renamed in a row, so an
    interruption while writing leaves the old set (the window for a mixed one is three renames)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staged = [(out / f".{split_filename(s)}.staged-{os.getpid()}", out / split_filename(s)) for s in SPLITS]
    try:
        for (tmp, _), s in zip(staged, SPLITS):
            write_tsv(tmp, splits[s])
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


PROVENANCE_NAME = "generator.json"   # in a folder the CLI wrote; other basic_*.tsv files are not replaced


def _capacity_error(min_length: int, max_length: int, total: int) -> str | None:
    """Why ``total`` distinct expressions with min_length < length < max_length cannot exist, or None when they
    may. Decided for max_length <= 5 only, where just leaves (length 1) and one operator over two digits
    (length 4) fit; longer ranges hold far more than any count asked for."""
    if max_length > 5:
        return None
    capacity = 10 * (min_length < 1) + 4 * 10 * 10 * (min_length < 4 < max_length)
    if total <= capacity:
        return None
    return f"only {capacity} distinct expressions have {min_length} < length < {max_length}; {total} were asked for"


def _check_cli_args(p: argparse.ArgumentParser, a) -> None:
    """Impossible arguments, refused before generating (argparse's error: usage, message, exit status 2)."""
    for name in ("num_train", "num_val", "num_test"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not 0 <= a.min_length < a.max_length - 1:
        p.error(f"need 0 <= --min-length < --max-length - 1, got {a.min_length} and {a.max_length}")
    if a.max_depth < 1 or a.max_args < 2:
        p.error(f"need --max-depth >= 1 and --max-args >= 2, got {a.max_depth} and {a.max_args}")
    too_few = _capacity_error(a.min_length, a.max_length, a.num_train + a.num_val + a.num_test)
    if too_few:
        p.error(too_few)
    out = Path(a.out)
    ours = (out / PROVENANCE_NAME).is_file()
    existing = [split_filename(s) for s in SPLITS if (out / split_filename(s)).exists()]
    if existing and not ours and not a.force:
        p.error(f"{out} holds {', '.join(existing)} that this command did not write (the official release?); "
                f"choose another --out, or pass --force to replace them")
    try:
        _common.check_writable(out, "choose another --out")
    except ValueError as e:
        p.error(str(e))


def ensure_generated(
    data_dir,
    *,
    num_train: int = DEFAULTS["num_train"],
    num_val: int = DEFAULTS["num_val"],
    num_test: int = DEFAULTS["num_test"],
    min_length: int = DEFAULTS["min_length"],
    max_length: int = DEFAULTS["max_length"],
    seed: int = DEFAULTS["seed"],
) -> Path:
    """Folder holding generated ``basic_{train,val,test}.tsv``; generates them on the first call.

    Generation goes to a temporary sibling folder that is renamed into place, so an interrupted run
    never leaves a half dataset behind."""
    folder = generated_dir(
        data_dir,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        min_length=min_length,
        max_length=max_length,
        seed=seed,
    )
    if _complete(folder):
        return folder
    _common.check_writable(folder.parent, _WRITE_HINT)   # before generating, not at the first write after it
    folder.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    splits = generate_splits(num_train, num_val, num_test, min_length=min_length, max_length=max_length, seed=seed)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        write_splits(tmp, splits)
        if folder.exists():
            if _complete(folder):  # someone else finished first
                shutil.rmtree(tmp)
                return folder
            stale = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.stale-"))
            os.replace(folder, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _complete(folder):  # lost a rename race against a concurrent generation
            return folder
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dt = time.monotonic() - t0
    log.info(
        "generated ListOps %d/%d/%d examples (%d < length < %d, seed %d) in %.1fs into %s",
        num_train,
        num_val,
        num_test,
        min_length,
        max_length,
        seed,
        dt,
        folder,
    )
    return folder


_WRITE_HINT = "set data_dir=<a folder you can write to> (or $LRA_DATA), where the generated ListOps data is cached"


def generate_options(generate) -> dict:
    """The ensure_generated keyword arguments that ``task.data.generate`` asks for, its defaults filled in.

    Checked before anything is generated: ValueError naming ``task.data.generate.<key>`` for a key that
    ensure_generated does not take (listing those it does), a value that is not an integer, or sizes that
    cannot be generated."""
    params = inspect.signature(ensure_generated).parameters
    valid = [name for name in params if name != "data_dir"]
    if not isinstance(generate, Mapping):
        raise ValueError(f"task.data.generate must be a mapping of {', '.join(valid)} "
                         f"(e.g. {{num_train: 128, num_val: 40, num_test: 40, min_length: 10, max_length: 64, "
                         f"seed: 0}}) or null (read the release files in <data_dir>/listops/), got {generate!r}")
    unknown = [k for k in generate if k not in valid]
    if unknown:
        names = ", ".join(f"task.data.generate.{k}" for k in unknown)
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {names} for ListOps generation (a typo, "
                         f"or a key added with '+' that nothing reads): remove it; valid: "
                         f"{', '.join(f'task.data.generate.{k}' for k in valid)}")
    for key, value in generate.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"task.data.generate.{key} must be an integer, got {value!r}")
    kw = {name: params[name].default for name in valid} | {k: int(v) for k, v in generate.items()}
    for name in ("num_train", "num_val", "num_test"):
        if kw[name] < 1:
            raise ValueError(f"task.data.generate.{name} must be >= 1, got {kw[name]}")
    if not 0 <= kw["min_length"] < kw["max_length"] - 1:
        raise ValueError(f"need 0 <= task.data.generate.min_length < task.data.generate.max_length - 1 (expressions "
                         f"have min_length < length < max_length), got {kw['min_length']} and {kw['max_length']}")
    too_few = _capacity_error(kw["min_length"], kw["max_length"], kw["num_train"] + kw["num_val"] + kw["num_test"])
    if too_few:
        raise ValueError(f"task.data.generate: {too_few}")
    return kw


def _fit_advice(max_length: int, gen: dict) -> str:
    """What to set so that generated expressions fit in ``max_length`` tokens. The generator counts an
    expression's length as the tokenizer does (operators, digits and ``]``; parentheses neither counts), and
    keeps min_length < length < max_length."""
    return (f"set task.data.generate.max_length <= {max_length + 1} (generated lengths stay below it, counted in "
            f"tokens like task.max_length: operators, digits and ']', not parentheses)"
            + (f" with task.data.generate.min_length < {max_length}" if gen["min_length"] >= max_length else "")
            + f", or raise task.max_length to {gen['max_length'] - 1}")


def _check_generated_fit(gen: dict, max_length) -> None:
    """Refuse, before generating, the sizes that certainly truncate: every generated expression has more than
    ``min_length`` tokens, so ``min_length >= max_length`` cuts all of them. (Longer maxima than max_length + 1
    cut only some, if any: load counts them once the data exists.)"""
    known = isinstance(max_length, numbers.Integral) and not isinstance(max_length, bool)  # else config refuses it
    if known and gen["min_length"] >= max_length:
        raise ValueError(f"every generated ListOps expression has more than task.data.generate.min_length="
                         f"{gen['min_length']} tokens, so none fits in task.max_length={max_length}: each would be "
                         f"cut and its label no longer follow from the input; {_fit_advice(max_length, gen)}")


def _cli_command(out: Path, **kw) -> str:
    kw = {**DEFAULTS, **kw}
    return (
        f"python -m lra.data.listops --out {_common.q(out)} --num-train {kw['num_train']} --num-val {kw['num_val']} "
        f"--num-test {kw['num_test']} --min-length {kw['min_length']} --max-length {kw['max_length']} "
        f"--seed {kw['seed']}"
    )


def load(split: str, *, data_dir, max_length: int = 2000, generate: dict | None = None) -> dict[str, np.ndarray]:
    """Arrays of one split (see read_tsv).

    With ``generate`` (a dict of ensure_generated keyword arguments) the data set is generated and
    cached under ``data_dir/listops/generated-...``; otherwise the files are read from
    ``data_dir/listops/basic_{split}.tsv`` (the official ``lra_release/listops-1000/`` files, or the
    output of the CLI).

    Expressions longer than ``max_length`` tokens are cut, and their labels no longer follow from the input: in
    generated data that is refused (ValueError saying what to set); in files read as they are (the release) it
    is LRA's own truncation, done with a warning that counts them."""
    fname = split_filename(split)
    if generate is not None:
        gen = generate_options(generate)
        _check_generated_fit(gen, max_length)
        folder = ensure_generated(data_dir, **gen)
    else:
        folder = Path(data_dir) / "listops"
    _require_file(folder / fname)
    arrays, full = _read_tsv(folder / fname, max_length)
    cut = int((full > max_length).sum())
    if cut and generate is not None:
        raise ValueError(f"{cut} of {full.size} generated ListOps {split} expressions (in {folder}) are longer than "
                         f"task.max_length={max_length} tokens (the longest has {int(full.max())}): they would be cut "
                         f"and their labels no longer follow from the input; {_fit_advice(max_length, gen)}")
    if cut:
        log.warning("%s: %d of %d ListOps expressions are longer than max_length=%d tokens (the longest has %d) and "
                    "are cut to it, as LRA's input pipeline cuts them; task.max_length=%d keeps them whole",
                    folder / fname, cut, full.size, max_length, int(full.max()), int(full.max()))
    return arrays


def _require_file(path: Path) -> None:
    if not path.is_file():
        folder = path.parent
        raise FileNotFoundError(
            f"ListOps file not found: {path}\n"
            f"Create it with:\n    {_cli_command(folder)}\n"
            f"or place the official LRA release files (lra_release/listops-1000/basic_{{train,val,test}}.tsv) "
            f"in {folder}/"
        )


def check_available(*, data_dir, max_length: int = 2000, generate: dict | None = None) -> None:
    """Fail fast (no generation, no reading): FileNotFoundError when files that cannot be generated are missing;
    ValueError for ``generate`` options that cannot work (see generate_options), sizes whose expressions are
    all longer than ``max_length``, and data that must be generated where it cannot be written."""
    if generate is None:
        for split in SPLITS:
            _require_file(Path(data_dir) / "listops" / split_filename(split))
        return
    gen = generate_options(generate)
    _check_generated_fit(gen, max_length)
    folder = generated_dir(data_dir, **gen)
    if not _complete(folder):
        _common.check_writable(folder.parent, _WRITE_HINT)


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lra.data.listops", description="Generate the LRA ListOps data set.")
    p.add_argument("--out", required=True, help="output folder for basic_{train,val,test}.tsv")
    p.add_argument("--num-train", type=int, default=DEFAULTS["num_train"])
    p.add_argument("--num-val", type=int, default=DEFAULTS["num_val"])
    p.add_argument("--num-test", type=int, default=DEFAULTS["num_test"])
    p.add_argument("--min-length", type=int, default=DEFAULTS["min_length"], help="keep length > this")
    p.add_argument("--max-length", type=int, default=DEFAULTS["max_length"], help="keep length < this")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--max-depth", type=int, default=MAX_DEPTH)
    p.add_argument("--max-args", type=int, default=MAX_ARGS)
    p.add_argument("--force", action="store_true", help="replace basic_*.tsv files this command did not write")
    a = p.parse_args(argv)
    _check_cli_args(p, a)
    t0 = time.monotonic()
    out = Path(a.out)
    try:
        splits = generate_splits(a.num_train, a.num_val, a.num_test, min_length=a.min_length,
                                 max_length=a.max_length, seed=a.seed, max_depth=a.max_depth,
                                 max_args=a.max_args, progress=True)
        t_gen = time.monotonic() - t0
        out.mkdir(parents=True, exist_ok=True)
        (out / PROVENANCE_NAME).unlink(missing_ok=True)   # written last: present only beside a complete set
        write_splits(out, splits)
        args = {k: v for k, v in vars(a).items() if k not in ("out", "force")}
        _common.write_json(out / PROVENANCE_NAME, {"generator": "lra.data.listops", **args})
    except (OSError, RuntimeError) as e:   # a full disk; a length range too narrow for the count
        print(f"error: {e}", file=sys.stderr)
        return 1
    for s in SPLITS:
        print(f"{out / split_filename(s)}: {len(splits[s])} examples")
    print(f"generated in {t_gen:.1f}s, total {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
