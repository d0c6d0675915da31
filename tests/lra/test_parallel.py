"""Data parallelism: 4 (forced host) devices give the single-device result at the same global batch."""
import json
import os
import subprocess
import sys

import numpy as np

from lra import trainer
from tests.conftest import ROOT, compose_config

SCRIPT = """
import json, sys
from lra import config as config_lib, trainer
from tests.conftest import compose_config
out, data = sys.argv[1], sys.argv[2]
base = ["task=listops", "attention=full", "profile=smoke", f"data_dir={data}", f"results_dir={out}/results",
        "train.progress=false", "train.train_steps=10", "train.eval_every=10", "train.log_every=10"]
try:
    trainer.train(compose_config(base + ["train.batch_size=6"]), f"{out}/bad")
    error = None
except config_lib.ConfigError as e:
    error = str(e)
record = trainer.train(compose_config(base), f"{out}/run")
print("RESULT " + json.dumps({"record": record, "error": error}))
"""


def test_four_devices_equal_one_device(tmp_path):
    data = tmp_path / "data"
    # The flags of this run (`make test` sets some) plus four host devices.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = dict(os.environ, XLA_FLAGS=flags,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "four"), str(data)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    four, error = out["record"], out["error"]
    assert error is not None and "train.batch_size=6" in error and "4 devices" in error
    assert four["num_devices"] == 4 and four["num_hosts"] == 1

    one = trainer.train(compose_config([
        "task=listops", "attention=full", "profile=smoke", f"data_dir={data}", f"results_dir={tmp_path / 'r1'}",
        "train.progress=false", "train.train_steps=10", "train.eval_every=10", "train.log_every=10"]),
        tmp_path / "one")
    assert one["num_devices"] == 1
    for key in ("final_train_loss", "test_loss", "best_val_accuracy", "test_accuracy"):
        np.testing.assert_allclose(four[key], one[key], rtol=1e-5, err_msg=key)
