import socket
import threading
import time

import pytest
import uvicorn

import nextblock
from nextblock.serving import create_app
from tests.helpers import save_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny model with a long context (for long generations) and a chat template."""
    return save_tiny(tmp_path_factory.mktemp("serve") / "tiny", max_position_embeddings=4096)


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    return nextblock.load(tiny_dir)


class LiveServer:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def serve(tiny_lm):
    servers = []

    def start(**kw):
        s = LiveServer(create_app(tiny_lm, served_name="tiny", **kw))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
