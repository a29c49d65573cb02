"""ray.placement_strategy: the default places as before (PACK, no scheduling strategy for engines); SPREAD and
STRICT_SPREAD reach the training ranks' placement group and the engines; STRICT_SPREAD on too few nodes fails at
once with what to change (not after the placement group's 300 s wait)."""

from __future__ import annotations

import pytest

from rlhf.config.load import validate_dict


def _recipe(**ray_section):
    return validate_dict({"model": {"path": "unused"}, "rewards": [{"name": "r", "plugin": "exact_match"}],
                          "ray": ray_section}, "test")


def test_the_default_is_pack_and_unknown_strategies_are_refused():
    from rlhf.config import RecipeError

    assert _recipe().ray.placement_strategy == "PACK"
    assert _recipe(placement_strategy="STRICT_SPREAD").ray.placement_strategy == "STRICT_SPREAD"
    with pytest.raises(RecipeError, match="placement_strategy"):
        _recipe(placement_strategy="spread_out")


def test_strategies_reach_the_ranks_and_the_engines(ray_session):
    from ray.util.placement_group import placement_group_table, remove_placement_group

    from rlhf.transport.placement import PlacementError, actor_node, rollout_options, train_bundles

    assert "scheduling_strategy" not in rollout_options(1, "PACK")  # engines as before
    assert rollout_options(1, "SPREAD")["scheduling_strategy"] == "SPREAD"
    assert rollout_options(1, "STRICT_SPREAD")["scheduling_strategy"] == "SPREAD"
    for strategy in ("PACK", "SPREAD"):  # one node: SPREAD is best effort, so both ranks fit on it
        options = train_bundles(2, strategy=strategy)
        pg = options[0]["scheduling_strategy"].placement_group
        assert placement_group_table(pg)["strategy"] == strategy and [o["scheduling_strategy"].placement_group_bundle_index
                                            for o in options] == [0, 1]
        remove_placement_group(pg)
    with pytest.raises(PlacementError, match="STRICT_SPREAD .* 2 nodes needed, this Ray cluster has 1 alive"):
        train_bundles(2, strategy="STRICT_SPREAD")
    assert len(actor_node()["node_id"]) == 56  # the driver's node: what actors report for placement.json
