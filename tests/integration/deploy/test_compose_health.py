"""docker-compose.yml's Qdrant health check, run as written against the test server."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.services import REPO, Services

pytestmark = pytest.mark.integration


def test_the_qdrant_health_check_passes_on_a_ready_server(services: Services) -> None:
    compose = REPO / "docker-compose.yml"
    check = yaml.safe_load(compose.read_text())["services"]["qdrant"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    where = urlsplit(services.qdrant_url)
    command = check[1].replace("127.0.0.1/6333", f"{where.hostname}/{where.port}")
    assert command != check[1]
    done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    closed = check[1].replace("127.0.0.1/6333", "127.0.0.1/1")
    refused = subprocess.run(["bash", "-c", closed], capture_output=True, timeout=10, check=False)
    assert refused.returncode != 0
