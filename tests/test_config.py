from __future__ import annotations

import pytest

from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError


def cfg(**values):
    return build_config("mtl_l1", "synthetic", 0, None, values, where="test")


def test_same_config_same_id_and_golden_value():
    # The id must not drift between machines or versions by accident: a change here needs CONFIG_VERSION bumped.
    assert cfg().run_id == cfg().run_id
    assert cfg(lr=1e-3).run_id == cfg().run_id
    assert len(cfg().run_id) == 12
    assert build_config("erm", "synthetic", 0, None, {}, where="t").run_id == "d24e69726501"


def test_any_result_defining_change_gives_a_new_id():
    base = cfg().run_id
    changed = [cfg(lr=3e-4), cfg(alpha_aux=2.0), cfg(p_train=0.9), cfg(hidden_dim=32), cfg(reg_target="cls"),
               build_config("mtl_l1", "synthetic", 1, None, {}, where="t")]
    ids = {c.run_id for c in changed}
    assert base not in ids and len(ids) == len(changed)


def test_int_and_float_spellings_hash_equal():
    assert cfg(lr=1).run_id == cfg(lr=1.0).run_id


def test_options_never_enter_the_hash():
    # RunOptions is not part of RunConfig at all; the run id is a function of the config alone.
    opts = RunOptions(data_root="/somewhere", device="cuda", threads=4, checkpoint_every=10)
    assert "data_root" not in cfg().to_dict() and opts.data_root
    assert cfg().setting_id == build_config("mtl_l1", "synthetic", 7, None, {}, where="t").setting_id


def test_hparams_flat_and_complete():
    h = cfg(alpha_reg=0.5).hparams()
    assert h["alpha_reg"] == 0.5 and h["lr"] == 1e-3 and h["p_train"] == 0.95 and h["hidden_dim"] == 64


@pytest.mark.parametrize("values, fragment", [
    ({"lr": 0}, "lr must be > 0"),
    ({"epochs": 0}, "epochs must be > 0"),
    ({"batch_size": -4}, "batch_size must be > 0"),
    ({"epochs": 2.5}, "epochs must be int"),
    ({"alpha_aux": -1}, "alpha_aux must be >= 0"),
    ({"reg_target": "all"}, "reg_target must be one of cls, tokens"),
    ({"alpah_aux": 1.0}, "did you mean 'alpha_aux'"),
])
def test_bad_values_are_one_clear_line(values, fragment):
    with pytest.raises(UserError, match=fragment):
        cfg(**values)


def test_canonical_json_is_exactly_json_dumps_of_the_config():
    import json

    for c in (cfg(), cfg(alpha_reg=0.5, reg_target="tokens"), build_config("erm", "synthetic", 3, None, {}, where="t")):
        expected = json.dumps(c.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert c.canonical_json() == expected
        without_seed = {k: v for k, v in c.to_dict().items() if k != "seed"}
        assert c.canonical_json(with_seed=False) == json.dumps(without_seed, sort_keys=True, separators=(",", ":"))
