"""The selection rules by the name `--select` takes; a rule is added here and nowhere else."""

from __future__ import annotations

from robustmtl.aggregate.fewgroups import FewGroupsSelector
from robustmtl.aggregate.patience import PatienceSelector
from robustmtl.aggregate.select import MetricSelector, Selector
from robustmtl.aggregate.worstclass import WorstClassSelector
from robustmtl.errors import UserError

SELECTORS: dict[str, Selector] = {
    s.name: s
    for s in (
        MetricSelector("worst-val", "val", "worst_group_acc", "validation worst-group accuracy"),
        PatienceSelector(),
        MetricSelector("avg-val", "val", "avg_acc", "validation average accuracy", reads_all_val_groups=False),
        WorstClassSelector(),
        FewGroupsSelector(),
        MetricSelector("oracle", "test", "worst_group_acc", "test worst-group accuracy", upper_bound=True),
    )
}


def get_selector(name: str) -> Selector:
    """Look up a rule by its CLI name; a typo is a user error that lists the valid names."""
    try:
        return SELECTORS[name]
    except KeyError:
        raise UserError(f"unknown selection rule {name!r}; valid: {', '.join(SELECTORS)}") from None
