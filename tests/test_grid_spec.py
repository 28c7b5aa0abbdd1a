from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from robustmtl.errors import UserError
from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec
from robustmtl.grid.submit import check_size
from tests.conftest import write_spec

ISSUE_EXAMPLE = """
name = "demo"
datasets = ["synthetic"]
methods  = ["erm", "mtl_l1"]
seeds    = [0, 1, 2]
[defaults]                 # hyperparameters of every run
epochs = 20
[sweep]                    # axes crossed for every method
lr = [1e-3, 3e-4]
[method.mtl_l1.sweep]     # axes crossed for one method only
alpha_aux = [0.368, 1.0]
alpha_reg = [0.368, 1.0]
[executor]                 # where and how runs execute
kind = "local"             # auto | local | slurm | debug
"""


def test_issue_example_expands_to_the_cross_product(tmp_path):
    runs = expand(load_spec(write_spec(tmp_path / "g.toml", ISSUE_EXAMPLE)))
    by_method = {m: [r for r in runs if r.config.method == m] for m in ("erm", "mtl_l1")}
    assert len(by_method["erm"]) == 3 * 2
    assert len(by_method["mtl_l1"]) == 3 * 2 * 2 * 2
    assert len({r.run_id for r in runs}) == len(runs) == 30
    assert all(r.config.train.epochs == 20 for r in runs)
    assert {r.config.method_params.alpha_reg for r in by_method["mtl_l1"]} == {0.368, 1.0}


def test_axes_a_method_does_not_have_collapse(tmp_path):
    text = ISSUE_EXAMPLE.replace("lr = [1e-3, 3e-4]", "lr = [1e-3]\nalpha_aux = [0.5, 2.0]")
    text = text.replace("alpha_aux = [0.368, 1.0]\n", "")
    runs = expand(load_spec(write_spec(tmp_path / "g.toml", text)))
    assert len([r for r in runs if r.config.method == "erm"]) == 3
    assert len([r for r in runs if r.config.method == "mtl_l1"]) == 3 * 2 * 2


def test_dataset_table_sets_dataset_parameters(tmp_path):
    text = ISSUE_EXAMPLE.replace("[defaults]", "[dataset.synthetic]\np_train = 0.9\n[defaults]")
    runs = expand(load_spec(write_spec(tmp_path / "g.toml", text)))
    assert {r.config.data_params.p_train for r in runs} == {0.9}


def test_each_dataset_may_name_its_own_model_and_training_values(tmp_path):
    text = ISSUE_EXAMPLE.replace('["synthetic"]', '["synthetic", "text_spurious"]').replace(
        "[defaults]", "[dataset.synthetic]\nhidden_dim = 8\nepochs = 3\n[dataset.text_spurious]\nmodel = "
                      "\"bert\"\nbert_pretrained = \"/models/minilm\"\n[defaults]")
    runs = expand(load_spec(write_spec(tmp_path / "g.toml", text)))
    by_dataset = {d: [r.config for r in runs if r.config.dataset == d] for d in ("synthetic", "text_spurious")}
    assert {(c.model, c.train.epochs, c.model_params.hidden_dim) for c in by_dataset["synthetic"]} == {("mlp", 3, 8)}
    assert {(c.model, c.train.epochs, c.model_params.bert_pretrained) for c in by_dataset["text_spurious"]} == {
        ("bert", 20, "/models/minilm")}


BAD_SPECS = [
    ("name = \"x\"\ndatasets = [\"synthetic\"]\nmethods = [\"erm\"\nseeds = [0]", "malformed TOML"),
    (ISSUE_EXAMPLE + "\nbogus = 1\n", "unknown [executor] key `bogus`"),
    (ISSUE_EXAMPLE.replace('name = "demo"', 'name = "demo"\ncolour = "red"'), "unknown top-level key `colour`"),
    (ISSUE_EXAMPLE.replace('"erm", "mtl_l1"', '"ermm", "mtl_l1"'), "did you mean 'erm'"),
    (ISSUE_EXAMPLE.replace('["synthetic"]', '["synthetik"]'), "unknown dataset 'synthetik'"),
    (ISSUE_EXAMPLE.replace("[0, 1, 2]", "[0, 1.5]"), "seeds"),
    (ISSUE_EXAMPLE.replace("[0, 1, 2]", "[]"), "seeds"),
    (ISSUE_EXAMPLE.replace("lr = [1e-3, 3e-4]", "lr = []"), "empty sweep axis"),
    (ISSUE_EXAMPLE.replace("lr = [1e-3, 3e-4]", "lr = 1e-3"), "must be a list of values"),
    (ISSUE_EXAMPLE.replace("epochs = 20", "epochs = 0"), "epochs must be > 0"),
    (ISSUE_EXAMPLE.replace("epochs = 20", 'epochs = "many"'), "epochs must be int"),
    (ISSUE_EXAMPLE.replace("epochs = 20", "epoch = 20"), "did you mean 'epochs'"),
    (ISSUE_EXAMPLE.replace("alpha_reg = [0.368, 1.0]", "alpha_reg = [-1.0]"), "alpha_reg must be >= 0"),
    (ISSUE_EXAMPLE.replace('kind = "local"', 'kind = "kubernetes"'), "kind must be one of"),
    (ISSUE_EXAMPLE.replace("[method.mtl_l1.sweep]", "[method.jtt.sweep]"), "not listed in `methods`"),
    (ISSUE_EXAMPLE.replace("alpha_aux = [0.368, 1.0]", "alpah_aux = [0.368, 1.0]"), "did you mean 'alpha_aux'"),
    (ISSUE_EXAMPLE.replace('name = "demo"', 'name = "../up"'), "`name` must be a simple name"),
    (ISSUE_EXAMPLE.replace("[defaults]", "[dataset.synthetic]\ndata_root = 5\n[defaults]"),
     "[dataset.synthetic] data_root must be a folder path"),
    (ISSUE_EXAMPLE.replace("[defaults]", "[dataset.synthetic]\nmodel = [\"mlp\"]\n[defaults]"),
     "[dataset.synthetic] model must be a single value"),
    (ISSUE_EXAMPLE.replace("[defaults]", "[dataset.synthetic]\nmodel = \"mpl\"\n[defaults]"), "did you mean 'mlp'"),
    (ISSUE_EXAMPLE.replace("[defaults]", "[dataset.synthetic]\nmodel = \"bert\"\n[defaults]"),
     "pick a vector model"),
    (ISSUE_EXAMPLE.replace("[defaults]", "[dataset.synthetic]\nn_trian = 100\n[defaults]"),
     "[dataset.synthetic] 'n_trian' is not a parameter of dataset 'synthetic'"),
    (ISSUE_EXAMPLE.replace("[defaults]", "[dataset.synthetic]\np_train = [0.9, 0.8]\n[defaults]"),
     "sweep values in [sweep]"),
    (ISSUE_EXAMPLE.replace('seeds    = [0, 1, 2]', 'seeds    = [0]\nmodel = 3'), "`model` must be one model name"),
]


@pytest.mark.parametrize("text, fragment", BAD_SPECS)
def test_bad_specs_are_rejected_with_file_and_key(tmp_path, text, fragment):
    path = write_spec(tmp_path / "bad.toml", text)
    with pytest.raises(UserError) as info:
        expand(load_spec(path))
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message


def test_a_byte_order_mark_is_not_a_syntax_error(tmp_path):
    """Some Windows editors start UTF-8 files with U+FEFF; TOML would call it an invalid statement."""
    path = tmp_path / "bom.toml"
    path.write_text("\ufeff" + ISSUE_EXAMPLE, encoding="utf-8")
    plain = load_spec(write_spec(tmp_path / "plain.toml", ISSUE_EXAMPLE))
    assert [r.run_id for r in expand(load_spec(path))] == [r.run_id for r in expand(plain)]


def test_run_limit_counts_every_planned_run_and_zero_lifts_it(tmp_path):
    spec = load_spec(write_spec(tmp_path / "g.toml", ISSUE_EXAMPLE))
    runs = expand(spec)
    check_size(spec, runs, len(runs))
    check_size(spec, runs, 0)
    with pytest.raises(UserError, match=r"30 runs \(methods 2 × seeds 3 × lr 2 × mtl_l1.alpha_aux 2 × "
                                        r"mtl_l1.alpha_reg 2\), more than --max-runs 29"):
        check_size(spec, runs, 29)


ROOT = Path(__file__).resolve().parent.parent
SHIPPED_GRIDS = sorted((ROOT / "jobs").rglob("*.toml"))


def test_grids_are_shipped():
    assert {p.name for p in SHIPPED_GRIDS} >= {"demo.toml", "synthetic.toml", "waterbirds.toml"}


@pytest.mark.parametrize("path", SHIPPED_GRIDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_grid_is_plain_toml_and_loads(path):
    with path.open("rb") as f:
        raw = tomllib.load(f)
    spec = load_spec(path)
    assert spec.methods == raw["methods"] and spec.datasets == raw["datasets"]
    assert {m: t.sweep for m, t in spec.method_tables.items()} == {
        m: t.get("sweep", {}) for m, t in raw.get("method", {}).items()}
    assert expand(spec)


def test_a_list_of_tables_under_the_plural_key_is_refused_with_the_new_spelling(tmp_path):
    text = ISSUE_EXAMPLE.replace('methods  = ["erm", "mtl_l1"]\n', "").replace('name = "demo"', 'name = "demo"\n'
                                                                                 'methods = { erm = {} }')
    with pytest.raises(UserError, match=r"`methods` must be a list of names.*\[method.<name>\] table"):
        load_spec(write_spec(tmp_path / "g.toml", text))

