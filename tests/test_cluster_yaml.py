"""cluster.yaml as `ray up` will read it: valid for Ray's own validator, images that Ray publishes
for the installed Ray version (never the discontinued ray-ml repository), the project installed on
every node with Ray pinned to that version, MLflow on the head, and no mount it does not create."""

import json
import re
from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).parents[1]
# rayproject/ray:<version>-py<3XX>-<platform>; platforms as Ray's image build names them
# (cpu, or cuXYZ for CUDA X.YZ, e.g. cu128), and -gpu (an alias of one cuXYZ image).
IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py3\d+-(?P<platform>cpu|gpu|cu\d{3})$")


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _images(raw: dict) -> dict[str, str]:
    docker = raw.get("docker", {})
    images = {k: docker[k] for k in ("image", "head_image", "worker_image") if k in docker}
    for name, node in raw["available_node_types"].items():
        for k, v in node.get("docker", {}).items():
            if k.endswith("image"):
                images[f"{name}.{k}"] = v
    return images


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _config()
    schema = json.loads((Path(__import__("ray.autoscaler", fromlist=["x"]).__file__).parent / "ray-schema.json")
                        .read_text())
    jsonschema.validate(raw, schema)
    validate_config(prepare_config(raw))
    workers = raw["available_node_types"]["gpu_worker"]
    assert workers["max_workers"] >= workers["min_workers"] >= 0


def test_images_exist_for_the_installed_ray():
    images = _images(_config())
    assert images, "cluster.yaml names no image"
    for key, image in images.items():
        assert "ray-ml" not in image, f"{key}: {image}: Ray stopped publishing ray-ml images after 2.49"
        m = IMAGE.match(image)
        assert m, f"{key}: {image} is not a rayproject/ray:<version>-py3XX-<platform> tag"
        assert m["version"] == ray.__version__, f"{key}: {image} runs Ray {m['version']}, the project {ray.__version__}"
    workers = [v for k, v in images.items() if "worker" in k] or [images.get("image")]
    assert all(IMAGE.match(v)["platform"] != "cpu" for v in workers), "GPU workers need a CUDA image"


def test_every_node_installs_the_project_with_rays_version_and_gpu_nodes_get_cuda_torch():
    raw = _config()
    common = raw.get("setup_commands", [])
    for role in ("head_setup_commands", "worker_setup_commands"):
        cmds = common + raw.get(role, [])
        install = [c for c in cmds if "pip install" in c and "/home/ray/raykd" in c]
        assert install, f"{role}: the project is not installed"
        assert f"ray[default,tune,train]=={ray.__version__}" in install[0]
        torch_at = next(i for i, c in enumerate(cmds) if "pip install" in c and "torch==" in c)
        assert torch_at < cmds.index(install[0]), f"{role}: torch must come first (a bare torch pulls the CUDA build)"
    worker_torch = [c for c in raw["worker_setup_commands"] if "torch==" in c]
    assert worker_torch and "whl/cpu" not in worker_torch[0]  # PyPI's Linux torch is the CUDA build
    assert raw["file_mounts"].get("/home/ray/raykd") == "."


def test_mlflow_on_the_head_and_no_mount_assumed():
    raw = _config()
    assert any("mlflow server" in c for c in raw["head_start_ray_commands"])
    text = (ROOT / "cluster.yaml").read_text()
    assert "/mnt/" not in text and "efs" not in text.lower()
    assert "data.cache_dir" not in text  # the study travels through the bucket
