"""nextblock: context-causal block-diffusion language models.

    import nextblock
    lm = nextblock.load()                       # embedded default model
    print(nextblock.generate("Hi!", lm, mode="ar").text)
"""

from .config import BlockConfig, DecodeSettings
from .errors import ConfigError, InputError, ModelLoadError, NextBlockError
from .decoding.events import Completion, Generation
from .lm import NextBlockModel
from .loading import load

__version__ = "0.1.0"


def generate(prompts, model: NextBlockModel | str | None = None, **kwargs) -> Generation:
    """Generate with `model` (a loaded NextBlockModel, or a spec passed to `load`)."""
    lm = model if isinstance(model, NextBlockModel) else load(model)
    return lm.generate(prompts, **kwargs)


__all__ = ["load", "generate", "NextBlockModel", "Generation", "Completion", "BlockConfig",
           "DecodeSettings", "NextBlockError", "ModelLoadError", "ConfigError", "InputError"]
