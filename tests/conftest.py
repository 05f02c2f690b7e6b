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


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module that asks for it (2 CPUs), shut down after its last test."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    # The dashboard's state API releases ASHA-stopped trials' placement groups.
    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()
