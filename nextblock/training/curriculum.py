"""Block-size curriculum (design section 4):

    b(s) = min(b_max, b0 * r ** floor(max(0, s - s0) / D))

With b0 = 1, r = 2, b_max = 32 the block grows 1, 2, 4, 8, 16, 32. `for_run` picks D so that
growth ends at a given fraction of the run (default 60%), the sources' "by about step 2,500
of 4,000".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass
class BlockCurriculum:
    b0: int = 1
    r: int = 2
    b_max: int = 32
    s0: int = 0  # steps before growth starts
    D: int = 500  # steps per growth stage

    def __post_init__(self):
        for name, low in (("b0", 1), ("r", 1), ("b_max", 1), ("s0", 0), ("D", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"invalid curriculum {name}={v!r}: must be an integer >= {low}")
        if self.b0 > self.b_max:
            raise ConfigError(f"invalid curriculum: b0={self.b0} exceeds b_max={self.b_max}")

    def block_size(self, step: int) -> int:
        stage = min(max(0, step - self.s0) // self.D, 64)  # 2**64 > any b_max
        return min(self.b_max, self.b0 * self.r ** stage)

    def stages(self, total_steps: int) -> list[tuple[int, int]]:
        """(first step, block size) of every stage reached within the run."""
        out, last = [], None
        for s in range(total_steps):
            b = self.block_size(s)
            if b != last:
                out.append((s, b))
                last = b
        return out

    @classmethod
    def for_run(cls, total_steps: int, b_max: int = 32, b0: int = 1, r: int = 2,
                s0: int = 0, end_fraction: float = 0.6) -> "BlockCurriculum":
        """Spread the growth b0 -> b_max evenly so the last size starts at end_fraction."""
        if b0 >= b_max or r == 1:
            return cls(b0=b0, r=r, b_max=b_max, s0=s0, D=max(1, total_steps))
        n_growth = math.ceil(math.log(b_max / b0, r))
        D = max(1, int((total_steps * end_fraction - s0) // n_growth))
        return cls(b0=b0, r=r, b_max=b_max, s0=s0, D=D)
