"""Every user mistake: one line that says what is wrong, exit code 2, no traceback, nothing written.

Add a case by adding a row: (id, grid-file text or None, command args, expected fragment). In args,
{spec} is the grid file, {out} a grid directory that must not be created, {grid} a finished grid,
{file} a file, {under_file} a path below it, and {other} a folder holding someone else's file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import tiny_grid, write_spec

GOOD = tiny_grid("ok", ["erm"], [0], defaults={"epochs": 1, "n_train": 100, "n_val": 50, "n_test": 50})


def spec_with(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


SUBMIT = ["grid", "submit", "{spec}", "--out", "{out}"]
VISION = '\nname = "vision"\ndatasets = ["mnist_spurious"]\nmethods = ["erm"]\nseeds = [0, 1]\n[defaults]\n'
CASES = [
    ("malformed toml", "name = [", SUBMIT, "malformed TOML"),
    ("unknown top-level key", GOOD + "\n[extras]\nx = 1\n", SUBMIT, "unknown top-level key `extras`"),
    ("unknown method", spec_with('["erm"]', '["ernm"]'), SUBMIT, "did you mean 'erm'"),
    ("unknown dataset", spec_with('["synthetic"]', '["waterbird"]'), SUBMIT, "did you mean 'waterbirds'"),
    ("wrong value type", spec_with("epochs = 1", 'epochs = "1"'), SUBMIT, "epochs must be int"),
    ("empty sweep axis", GOOD + "\n[sweep]\nlr = []\n", SUBMIT, "empty sweep axis"),
    ("zero epochs", spec_with("epochs = 1", "epochs = 0"), SUBMIT, "epochs must be > 0"),
    ("negative batch size", spec_with("epochs = 1", "batch_size = -8"), SUBMIT, "batch_size must be > 0"),
    ("zero learning rate", spec_with("epochs = 1", "lr = 0.0"), SUBMIT, "lr must be > 0"),
    ("negative alpha", spec_with('["erm"]', '["mtl"]') + "\n[sweep]\nalpha_aux = [-1.0]\n", SUBMIT,
     "alpha_aux must be >= 0"),
    ("seeds not integers", spec_with("[0]", '["zero"]'), SUBMIT, "seeds"),
    ("seed past numpy's range", spec_with("[0]", "[4294967296]"), SUBMIT, "from 0 to 2**32 - 1"),
    ("negative seed on run", None, ["run", "--method", "erm", "--dataset", "synthetic", "--seed", "-1"],
     "seed must be an integer from 0"),
    ("infinite learning rate", spec_with("epochs = 1", "lr = inf"), SUBMIT, "lr must be a finite number"),
    ("nan on run", None, ["run", "--method", "erm", "--dataset", "synthetic", "--set", "weight_decay=nan"],
     "weight_decay must be a finite number"),
    ("one-minute time limit", GOOD + "timeout_min = 1\n", SUBMIT, "timeout_min must be >= 2"),
    ("one-minute --time", GOOD, [*SUBMIT, "--time", "1"], "Invalid value for '--time'"),
    ("dry run with a bad executor", GOOD, [*SUBMIT, "--dry-run", "--executor", "slurmm"], "kind must be one of"),
    ("unknown executor kind", spec_with('"debug"', '"kubernetes"'), SUBMIT, "kind must be one of"),
    ("unknown executor key", GOOD + 'partitions = "gpu"\n', SUBMIT, "did you mean 'partition'"),
    ("newline in a SLURM value", GOOD + 'partition = "gpu\\n#SBATCH --qos=high"\n', SUBMIT,
     "contains a newline or control character"),
    ("missing dataset directory", None, ["run", "--method", "erm", "--dataset", "waterbirds", "--data-root",
                                         "{out}"], "waterbirds"),
    ("hub model id while offline", None, ["run", "--method", "erm", "--dataset", "text_spurious", "--set",
                                          "bert_pretrained=org/no-such-model", "--out", "{out}"], "org/no-such-model"),
    ("unknown device in a grid", GOOD + 'device = "gpu"\n', SUBMIT, "device must look like"),
    ("unknown device on run", None, ["run", "--method", "erm", "--dataset", "synthetic", "--device", "gpu"],
     "device must look like"),
    ("path as a grid name", spec_with('"ok"', '"../../etc"'), SUBMIT, "`name` must be a simple name"),
    ("table for an unlisted method", GOOD + "\n[method.jtt.sweep]\njtt_upweight = [1.0]\n", SUBMIT,
     "[method.jtt] is for a method not listed in `methods`"),
    ("missing grid file", None, ["grid", "submit", "nope.toml"], "grid file not found"),
    ("different spec in grid dir", spec_with("[0]", "[0, 1]"), ["grid", "submit", "{spec}", "--out", "{grid}"],
     "different grid spec"),
    ("aggregate without runs", None, ["aggregate", "{out_existing}"], "no runs"),
    ("aggregate unknown rule", None, ["aggregate", "{grid}", "--select", "best"], "unknown selection rule"),
    ("negative few-groups seed", None, ["aggregate", "{grid}", "--select", "few-groups", "--few-groups-seed", "-1"],
     "Invalid value for '--few-groups-seed'"),
    ("negative bootstrap seed on plot", None, ["plot", "{grid}", "--ci", "bootstrap", "--seed", "-1", "--out", "{out}"],
     "Invalid value for '--seed'"),
    ("logs of unknown run", None, ["grid", "logs", "{grid}", "0123456789ab"], "0123456789ab"),
    ("logs of a non-id", None, ["grid", "logs", "{grid}", "../../x"], "unknown run id"),
    ("status of no grid", None, ["grid", "status", "{out}"], "no grid directory"),
    ("unknown method on run", None, ["run", "--method", "jt", "--dataset", "synthetic"], "did you mean 'jtt'"),
    ("set without value", None, ["run", "--method", "erm", "--dataset", "synthetic", "--set", "epochs"],
     "--set expects key=value"),
    ("corrupt config.json", None, ["run", "--method", "erm", "--dataset", "synthetic", "--out", "{corrupt_run}"],
     "run config is corrupt"),
    ("run into a file", None, ["run", "--method", "erm", "--dataset", "synthetic", "--out", "{file}"],
     "is a file, not a folder"),
    ("run under a file", None, ["run", "--method", "erm", "--dataset", "synthetic", "--out", "{under_file}"],
     "afile is a file, not a folder"),
    ("grid under a file", GOOD, ["grid", "submit", "{spec}", "--out", "{under_file}"], "afile is a file, not a folder"),
    ("dry run under a file", GOOD, ["grid", "submit", "{spec}", "--out", "{under_file}", "--dry-run"],
     "afile is a file"),
    ("run into a grid root", None, ["run", "--method", "erm", "--dataset", "synthetic", "--out", "{grid}"],
     "already holds other files and no config.json"),
    ("run into another folder", None, ["run", "--method", "erm", "--dataset", "synthetic", "--out", "{other}"],
     "already holds other files and no config.json"),
    ("grid into another folder", GOOD, ["grid", "submit", "{spec}", "--out", "{other}"],
     "already holds other files and no grid.toml"),
    ("sweep over the run limit", spec_with("[0]", "[0, 1, 2]") + "[sweep]\nlr = [0.1, 0.01]\n",
     [*SUBMIT, "--max-runs", "5"], "expands to 6 runs (seeds 3 × lr 2), more than --max-runs 5"),
    ("data_root not a path", spec_with("[defaults]", "[dataset.synthetic]\ndata_root = 5\n[defaults]"), SUBMIT,
     "data_root must be a folder path"),
    ("execution option through --set", None, ["run", "--method", "erm", "--dataset", "synthetic", "--set",
                                               "device=cpu"], "device is not a run parameter but an option of "
                                                              "`robustmtl run`; give --device cpu"),
    ("flag through --set", None, ["run", "--method", "erm", "--dataset", "synthetic", "--set", "compile=true"],
     "give --compile"),
    ("numeric execution option through --set", None, ["run", "--method", "erm", "--dataset", "synthetic", "--set",
                                                      "num_workers=0"], "give --num-workers 0"),
    ("seed through --set", None, ["run", "--method", "erm", "--dataset", "synthetic", "--set", "seed=3"],
     "give --seed 3"),
    ("execution key in a grid's defaults", spec_with("epochs = 1", "epochs = 1\nthreads = 2"), SUBMIT,
     "[defaults] 'threads' is an [executor] key"),
    ("vit key with the mlp", None, ["run", "--method", "erm", "--dataset", "synthetic", "--set", "vit_patch_size=8"],
     "'vit_patch_size' is a parameter of model 'vit', not of model 'mlp'"),
    ("mlp key with the vit", None, ["run", "--method", "erm", "--dataset", "mnist_spurious", "--set", "hidden_dim=8"],
     "'hidden_dim' is a parameter of model 'mlp', not of model 'vit'"),
    ("another method's key in its table", GOOD + "\n[method.erm.sweep]\nalpha_aux = [1.0]\n", SUBMIT,
     "[method.erm.sweep] 'alpha_aux' is a parameter of method 'mtl' or 'mtl_l1' or 'dfr' or 'afr', "
     "not of method 'erm'"),
    ("a model's key in a grid without it", spec_with("epochs = 1", "epochs = 1\nbert_max_length = 64"), SUBMIT,
     "'bert_max_length' is a parameter of model 'bert', not of any method"),
    ("plural method table", spec_with("[defaults]", "[methods.erm.sweep]\nlr = [0.1]\n[defaults]"), SUBMIT,
     "write [method.erm], not [methods.erm]"),
    ("plural dataset table", spec_with("[defaults]", "[datasets.synthetic]\np_train = 0.9\n[defaults]"), SUBMIT,
     "write [dataset.synthetic], not [datasets.synthetic]"),
    ("near-miss method subtable", GOOD + "\n[method.erm.sweeps]\nlr = [0.1]\n", SUBMIT,
     "unknown key `sweeps` in [method.erm] (did you mean 'sweep'?)"),
    ("method table under sweep", GOOD + "\n[sweep.erm]\nlr = [0.1]\n", SUBMIT, "[method.erm.sweep]"),
    ("near-miss top-level table", GOOD + "\n[sweeps]\nlr = [0.1]\n", SUBMIT,
     "unknown top-level key `sweeps` (did you mean 'sweep'?)"),
    ("unprepared benchmark on data check", None, ["data", "check", "waterbirds", "--data-root", "{out_existing}"],
     "then run `robustmtl data prepare waterbirds --from ... --data-root"),
    ("missing checkpoint folder on a dry run", VISION + 'vit_pretrained = "./no-such-vit"\n', [*SUBMIT, "--dry-run"],
     "vit_pretrained = './no-such-vit': no such folder"),
    ("missing weights file on submit", VISION + 'timm_weights = "no/such.safetensors"\n[dataset.mnist_spurious]\n'
                                                'model = "timm_vit"\n', SUBMIT, "timm_weights = 'no/such.safetensors': "
                                                                                 "no such file"),
    ("missing checkpoint folder on run", None, ["run", "--method", "erm", "--dataset", "text_spurious", "--set",
                                                "bert_pretrained=/no/such/bert"], "no such folder /no/such/bert"),
    *((f"{method} on an empty training group", None,
       ["run", "--method", method, "--dataset", "synthetic", "--set", "p_train=1.0", "--set", "epochs=1", "--set",
        "n_train=100", "--out", "{out}"],
       f"method {method!r} on synthetic: groups 'y=0/a=1', 'y=1/a=0' have no train examples") for method in ("gdro",
                                                                                                            "subg")),
    ("local python missing", spec_with('"debug"', '"local"') + 'python = "/nonexistent/python3"\n', SUBMIT,
     "[executor] python '/nonexistent/python3' does not exist or is not executable"),
]


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    spec = write_spec(root / "g.toml", GOOD)
    subprocess.run([sys.executable, "-m", "robustmtl", "grid", "submit", str(spec), "--out", str(root / "grid")],
                   check=True, capture_output=True)
    return root / "grid"


@pytest.mark.parametrize("text, args, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistake(tmp_path, finished_grid, text, args, fragment):
    spec = write_spec(tmp_path / "spec.toml", text) if text is not None else tmp_path / "spec.toml"
    (tmp_path / "existing").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text('{"method": "erm", "data')
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    before = sorted(p.name for p in finished_grid.rglob("*"))
    places = {"{spec}": spec, "{out}": tmp_path / "new-grid", "{grid}": finished_grid,
              "{out_existing}": tmp_path / "existing", "{corrupt_run}": corrupt, "{file}": tmp_path / "afile",
              "{under_file}": tmp_path / "afile" / "sub", "{other}": tmp_path / "other"}
    argv = [str(places.get(a, a)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "robustmtl", *argv], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "new-grid").exists()
    assert sorted(p.name for p in finished_grid.rglob("*")) == before
    assert (tmp_path / "afile").read_text() == "keep" and [p.name for p in (tmp_path / "other").iterdir()] == [
        "notes.txt"]


def test_corrupt_metrics_are_tolerated_with_a_warning(finished_grid, tmp_path):
    import shutil

    grid = tmp_path / "grid"
    shutil.copytree(finished_grid, grid)
    metrics = next(grid.glob("runs/*/metrics.jsonl"))
    metrics.write_text(metrics.read_text() + '{"run_id": "trunc')
    proc = subprocess.run([sys.executable, "-m", "robustmtl", "aggregate", str(grid)], capture_output=True, text=True)
    assert proc.returncode == 0 and "warning" in proc.stderr and "ERM" in proc.stdout
    assert json.loads(metrics.read_text().splitlines()[0])["method"] == "erm"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_asked_for_without_a_gpu_is_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "robustmtl", "run", "--method", "erm", "--dataset", "synthetic",
                           "--device", "cuda", "--set", "epochs=1", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "sees no CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not out.exists()
