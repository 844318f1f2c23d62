import pytest

import nextblock
from nextblock.serving import BackgroundServer, create_app
from tests.helpers import save_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny model with a long context (for long generations) and a chat template."""
    return save_tiny(tmp_path_factory.mktemp("serve") / "tiny", max_position_embeddings=4096)


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    return nextblock.load(tiny_dir)


@pytest.fixture
def serve(tiny_lm):
    servers = []

    def start(**kw):
        s = BackgroundServer(create_app(tiny_lm, served_name="tiny", **kw))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
