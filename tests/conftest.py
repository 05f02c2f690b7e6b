import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import helpers


@pytest.fixture(scope="session")
def tok():
    return helpers.tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "bert": helpers.tiny_bert(root / "bert", layers=4),
        "distilbert": helpers.tiny_distilbert(root / "distilbert"),
    }


def write_squad(path: Path, paragraphs: list[dict]) -> Path:
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def _ray_up() -> bool:
    # Ray is imported only where a test did import it: a unit test never pays for the import here.
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


_shared_ray = {"up": False}  # whether the Ray up in this process is the one local_ray started


def _stop_ray() -> None:
    if _ray_up():
        sys.modules["ray"].shutdown()
    _shared_ray["up"] = False


@pytest.fixture
def local_ray():
    """The session's one local Ray (2 CPUs) in this process, started by the first test that asks
    for it. Every test that asks for it runs in one block at the end of the session (see
    pytest_collection_modifyitems), so it starts once (a start and a shut-down cost several
    seconds each on 2 cores); it is shut down before any other test and at the end of the session."""
    if not _ray_up():
        import ray

        os.environ.pop("RAY_ADDRESS", None)
        # With the dashboard: its state API releases ASHA-stopped trials' placement groups.
        ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
        _shared_ray["up"] = True
    yield


@pytest.fixture(autouse=True)
def _one_ray_at_a_time(request):
    """Never two Ray instances at once in this process tree: a test that does not share the
    session's Ray (it starts a CLI subprocess, a cluster, or a Ray of a module fixture's) runs with
    the shared one shut down, and a Ray that the test itself started in this process (a Trainer's
    auto-init) is shut down after it. (Higher-scoped fixtures, such as a module's own Ray, are set
    up before this one and are left alone.)"""
    if "local_ray" in request.fixturenames:
        yield
        return
    if _shared_ray["up"]:
        _stop_ray()
    up_before = _ray_up()
    yield
    if not up_before and _ray_up():
        _stop_ray()


@pytest.fixture(scope="session", autouse=True)
def _no_ray_after_the_session():
    yield
    _stop_ray()


def pytest_collection_modifyitems(config, items):
    """The tests that share the session's Ray move (in their order) to one block at the end."""
    shared = [item for item in items if "local_ray" in item.fixturenames]
    if shared:
        items[:] = [item for item in items if "local_ray" not in item.fixturenames] + shared
