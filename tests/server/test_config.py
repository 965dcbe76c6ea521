"""The Config: validation, and the option table every interface is built from."""

from __future__ import annotations

import pytest

from server.config import Config
from server.errors import ConfigError


def test_config_validation() -> None:
    assert Config().url == "ws://127.0.0.1:8765"
    assert Config(workers=3).worker_count == 3
    assert Config(workers=0).worker_count >= 1
    for bad in ({"port": 70000}, {"workers": -1}, {"mode": "x"}, {"bus": "kafka"}, {"max_queue": 0},
                {"ping_interval": 0}, {"certfile": "a.pem"}):
        with pytest.raises(ConfigError):
            Config(**bad)  # type: ignore[arg-type]
    import pickle

    c = Config(port=1234)
    assert pickle.loads(pickle.dumps(c)) == c
