"""gunicorn.conf.py listens privately by default and refuses an open API on the network."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_conf(env: dict):
    """gunicorn.conf.py as gunicorn reads it, under `env`."""
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", ROOT / "gunicorn.conf.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.mark.parametrize(
    "env, bind",
    [
        ({}, "127.0.0.1:8000"),
        ({"PORT": "9001"}, "127.0.0.1:9001"),
        ({"HOST": "0.0.0.0", "PORT": "9002"}, "0.0.0.0:9002"),
        ({"BIND": "[::1]:9003", "HOST": "0.0.0.0"}, "[::1]:9003"),
    ],
)
def test_bind_defaults_to_loopback(env, bind):
    assert load_conf(env).bind == bind


@pytest.mark.parametrize(
    "addresses, env, refused",
    [
        (["127.0.0.1:8000"], {}, False),
        (["[::1]:8000", "localhost:8001", "unix:/run/app.sock"], {}, False),
        (["0.0.0.0:8000"], {}, True),
        (["[::]:8000"], {}, True),
        (["10.1.2.3:8000"], {}, True),
        (["app.example.com:8000"], {}, True),
        (["127.0.0.1:8000", "0.0.0.0:8001"], {}, True),
        (["0.0.0.0:8000"], {"API_TOKEN": "secret"}, False),
        (["0.0.0.0:8000"], {"ALLOW_OPEN": "1"}, False),
        (["0.0.0.0:8000"], {"ALLOW_OPEN": "yes"}, True),
    ],
)
def test_open_bind_decision(addresses, env, refused):
    problem = load_conf({}).open_bind_problem(addresses, env)
    assert (problem is not None) == refused
    if refused:
        assert "API_TOKEN" in problem and "ALLOW_OPEN=1" in problem


def test_real_gunicorn_refuses_a_public_bind_without_a_token(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key not in ("API_TOKEN", "ALLOW_OPEN", "BIND")}
    env.update(HOST="0.0.0.0", PORT=str(port), MONGO_URI="mongomock://", REPORTS_DIR=str(tmp_path / "reports"))
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"refusing to listen on 0.0.0.0:{port} without API_TOKEN" in result.stderr + result.stdout
    assert "Booting worker" not in result.stderr + result.stdout
