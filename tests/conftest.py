import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def default_lm():
    """The real embedded default model (SmolLM2-135M-Instruct), loaded once, float32 (the reference path)."""
    import nextblock

    return nextblock.load(dtype="float32")


@pytest.fixture(scope="session")
def default_fast():
    """The default model in its default configuration (the int8 engine on this CPU)."""
    import nextblock

    lm = nextblock.load()
    assert lm.quantization == "int8"
    return lm
