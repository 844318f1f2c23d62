"""The block-size schedule b(s) = min(b_max, b0 * r^floor(max(0, s - s0) / D))."""

import pytest

from nextblock.errors import ConfigError
from nextblock.training.curriculum import BlockCurriculum


def test_formula():
    c = BlockCurriculum(b0=1, r=2, b_max=32, s0=100, D=50)
    for s in range(0, 1000, 7):
        want = min(32, 1 * 2 ** (max(0, s - 100) // 50))
        assert c.block_size(s) == want
    assert c.block_size(10**12) == 32


def test_for_run_ends_growth_at_the_given_fraction():
    c = BlockCurriculum.for_run(4000, b_max=32, end_fraction=0.6)
    stages = c.stages(4000)
    assert [b for _, b in stages] == [1, 2, 4, 8, 16, 32]
    assert stages[-1][0] <= 0.6 * 4000 < stages[-1][0] + c.D


@pytest.mark.parametrize("kw", [dict(b0=0), dict(D=0), dict(r=0), dict(b0=8, b_max=4),
                                dict(s0=-1)])
def test_invalid(kw):
    with pytest.raises(ConfigError, match="curriculum"):
        BlockCurriculum(**kw)
