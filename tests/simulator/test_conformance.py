"""check_policy passes the built-ins, catches broken policies, and user policies with
parameters validate inside the scenario."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest
from conftest import tiny_scenario

from policies.batching import BATCHING, TokenBudgetBatching
from simulator import check_policy, simulate
from simulator.plan import EngineLimits, IterationPlan, PolicyParams, ReplicaView

DOCS = Path(__file__).parents[2] / "docs" / "policies.md"


@pytest.mark.parametrize(("kind", "name"), [("batching", "token_budget"),
                                            ("routing", "round_robin")])
def test_builtins_conform(kind, name):
    check_policy(kind, name)


@BATCHING.register("test_flaky_repeat")
class FlakyRepeat:
    """Claims its decode-only plans repeat, but admits only on every third call: what it
    does depends on how often it is asked, which fast-forwarding changes."""

    def __init__(self, inner: TokenBudgetBatching) -> None:
        self.inner = inner
        self.calls_ = 0

    @classmethod
    def from_config(cls, params: PolicyParams, limits: EngineLimits, rng) -> FlakyRepeat:
        return cls(TokenBudgetBatching(limits.max_num_seqs, limits.max_num_batched_tokens,
                                       limits.chunked_prefill))

    def schedule(self, view: ReplicaView) -> IterationPlan:
        self.calls_ += 1
        plan = self.inner.schedule(view)
        if self.calls_ % 3 and not plan.preempted:
            kept = [(r, n) for r, n in plan.prefill if r not in view.waiting]
            return IterationPlan(plan.num_decode_seqs, kept, [], may_repeat=True)
        return plan


def test_check_policy_catches_a_policy_whose_may_repeat_is_false():
    with pytest.raises(AssertionError, match="fast-forwarded runs differ"):
        check_policy("batching", "test_flaky_repeat")


def test_user_policy_from_the_docs_validates_and_conforms():
    code = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)[0]
    exec(compile(code, str(DOCS), "exec"), {"__name__": "user_policies"})  # runs check_policy
    ok = tiny_scenario(engine={"batching": {"kind": "capped_token_budget", "max_batch": 3}})
    assert simulate(ok).iterations.eval("num_prefill_seqs + num_decode_seqs").max() <= 3
    with pytest.raises(pydantic.ValidationError) as err:
        tiny_scenario(engine={"batching": {"kind": "capped_token_budget", "max_batch": 0}})
    assert "engine.batching" in str(err.value) and "max_batch" in str(err.value)
    with pytest.raises(pydantic.ValidationError, match=r"known: .*token_budget"):
        tiny_scenario(engine={"batching": "no_such_policy"})
