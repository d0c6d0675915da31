"""Pathfinder control: a small CNN trained on the same images as the Transformer, to tell "the data does not
carry its label" apart from "the model has not learned it yet".

    python scripts/pathfinder_control.py                      # 32x32 hard, the cpu profile's 20,000 generated images
    python scripts/pathfinder_control.py --num 0              # the release under <data-dir>/pathfinder32/ instead
    python scripts/pathfinder_control.py --quick              # a few steps on 200 images (what the tests run)
    python scripts/pathfinder_control.py --dilated            # dilated residual convolutions: sees a whole path

The LRA model sees the pixels as a flat sequence of 256 categorical tokens with no 2-D information, and on two
CPU cores it stays at chance on Pathfinder (configs/recipe/pathfinder/cpu.yaml). This control is not the
benchmark's model: six 3x3 convolutions (ReLU, 32 channels), a global max pool and a linear layer, on pixel
intensities scaled to [0, 1], trained with Adam on the same train split, selected on val, tested on test. If
it learns, the images carry their label and the 80/10/10 split is sound; if it stays at chance where it should
see the answer, suspect the data (a broken release folder, labels shuffled against the images). Six 3x3 layers
see 13 px around a pixel, less than a path of 14 paddles (about 38 px at 32x32): on our generator (v3), whose
near-marker ink is alike in both classes, it learns easy (99.35%) and stays at chance on hard with 20,000
images; ``--dilated --layers 8 --num 100000 --steps 5000`` learns hard (97.67%, README). ``--dilated`` doubles
the dilation every two layers (1, 1, 2, 2, 4, 4, 8, 8, ...) and adds each layer's output to its input after the
first (residual), so that eight layers see 61 px. One JSON line per run is appended to ``--out``: the val
curve, the test accuracy at the best val step, the wall time and the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a plain script from anywhere

DEFAULTS = {"num": 20000, "steps": 3000, "batch_size": 64, "eval_every": 500, "layers": 6, "channels": 32}
QUICK = {"num": 200, "steps": 20, "batch_size": 16, "eval_every": 10, "layers": 2, "channels": 8}
EVAL_BATCH = 500


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("LRA_DATA", "data"), help="[$LRA_DATA or data]")
    p.add_argument("--resolution", type=int, default=32, help="32, 64, 128 (Path-X) or 256 [32]")
    p.add_argument("--difficulty", default="hard", help="easy, medium or hard [hard]")
    p.add_argument("--num", type=int, help=f"generate this many images (cached in <data-dir>, as task.data.generate "
                                           f"does); 0 reads the release folder [{DEFAULTS['num']}]")
    p.add_argument("--seed", type=int, default=0, help="generator and training seed [0]")
    p.add_argument("--steps", type=int, help=f"[{DEFAULTS['steps']}]")
    p.add_argument("--batch-size", type=int, help=f"[{DEFAULTS['batch_size']}]")
    p.add_argument("--eval-every", type=int, help=f"[{DEFAULTS['eval_every']}]")
    p.add_argument("--layers", type=int, help=f"3x3 convolutions [{DEFAULTS['layers']}]")
    p.add_argument("--channels", type=int, help=f"[{DEFAULTS['channels']}]")
    p.add_argument("--dilated", action="store_true", help="dilation 2**(i // 2) in layer i, residual connections")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, constant [1e-3]")
    p.add_argument("--out", default="results/pathfinder_control.jsonl", help="JSONL file the record is appended to "
                                                                             "('' writes none)")
    p.add_argument("--quick", action="store_true", help="tiny data, model and step count (for tests); flags still win")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "batch_size", "eval_every", "layers", "channels"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.num < 0:
        p.error(f"--num must be >= 0 (0 reads the release folder), got {args.num}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    return args


def load_splits(args) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images float32 [N, res, res, 1] in [0, 1], labels int32 [N])} through the task's own loader."""
    from lra.data import pathfinder

    generate = {"num": args.num, "seed": args.seed} if args.num else None
    out = {}  # a missing release folder fails at the first load, in well under a second, naming the command
    for split in pathfinder.SPLITS:
        arrays = pathfinder.load(split, data_dir=args.data_dir, resolution=args.resolution,
                                 difficulty=args.difficulty, generate=generate)
        images = arrays["inputs"].reshape(-1, args.resolution, args.resolution, 1).astype(np.float32) / 255.0
        out[split] = (images, arrays["targets"])
    return out


def build(args):
    import jax
    import optax
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, layers: int, channels: int, dilated: bool, rngs: nnx.Rngs):
            self.dilated = dilated
            self.convs = nnx.List([nnx.Conv(1 if i == 0 else channels, channels, (3, 3),
                                            kernel_dilation=dilation(i, dilated), rngs=rngs)
                                   for i in range(layers)])
            self.head = nnx.Linear(channels, 2, rngs=rngs)

        def __call__(self, x):
            for i, conv in enumerate(self.convs):
                y = jax.nn.relu(conv(x))
                x = x + y if self.dilated and i > 0 else y
            return self.head(x.max(axis=(1, 2)))

    model = CNN(args.layers, args.channels, args.dilated, nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def correct(model, x, y):
        return (model(x).argmax(-1) == y).sum()

    return model, optimizer, train_step, correct


def dilation(layer: int, dilated: bool) -> int:
    return 2 ** (layer // 2) if dilated else 1


def receptive_field(layers: int, dilated: bool) -> int:
    """Pixels across that one output of the convolutions sees (3x3 kernels)."""
    return 1 + 2 * sum(dilation(i, dilated) for i in range(layers))


def model_name(args) -> str:
    kind = "dilated residual cnn" if args.dilated else "cnn"
    return (f"{kind} {args.layers}x3x3x{args.channels} (receptive field {receptive_field(args.layers, args.dilated)} "
            f"px), global max pool")


def accuracy(correct, model, images, labels) -> float:
    hits = sum(int(correct(model, images[i:i + EVAL_BATCH], labels[i:i + EVAL_BATCH]))
               for i in range(0, len(labels), EVAL_BATCH))
    return hits / len(labels)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        splits = load_splits(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from flax import nnx

    from lra import results
    from lra.data import pathfinder

    model, optimizer, train_step, correct = build(args)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits["train"], splits["val"], splits["test"]
    rng = np.random.default_rng(args.seed)
    curve, best, best_state, loss = [], (-1.0, 0), None, float("nan")
    t0 = time.monotonic()
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(y_train), args.batch_size)
        loss = float(train_step(model, optimizer, x_train[idx], y_train[idx]))
        if not np.isfinite(loss):
            print(f"error: the loss is {loss} at step {step}; lower --lr", file=sys.stderr)
            return 1
        if step % args.eval_every == 0 or step == args.steps:
            val = accuracy(correct, model, x_val, y_val)
            curve.append([step, round(val, 4)])
            if val > best[0]:
                best, best_state = (val, step), nnx.clone(nnx.state(model))
            print(f"step {step}: train loss {loss:.4f}, val accuracy {val:.4f} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
    seconds = time.monotonic() - t0
    nnx.update(model, best_state)
    test = accuracy(correct, model, x_test, y_test)
    record = {
        "kind": "pathfinder_control", "model": model_name(args),
        "resolution": args.resolution, "difficulty": args.difficulty,
        "data": (f"generated (generator v{pathfinder.GENERATOR_VERSION}), num {args.num}, seed {args.seed}" if args.num
                 else "release folder"),
        "sizes": {"train": int(len(y_train)), "val": int(len(y_val)), "test": int(len(y_test))},
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "val_curve": curve, "best_val_accuracy": round(best[0], 4), "best_step": best[1],
        "test_accuracy": round(test, 4), "final_train_loss": round(loss, 4), "seconds": round(seconds, 1),
        **results.provenance(),
    }
    print(f"test accuracy {test:.4f} at the best val step {best[1]} (val {best[0]:.4f}); {seconds:.0f} s on "
          f"{record['device']}")
    if args.out:
        results.append_jsonl(args.out, record)
        print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
