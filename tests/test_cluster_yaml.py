"""cluster.yaml, docker/Dockerfile and deploy/iam/ as `ray up` and AWS will read them: valid for Ray's
own validator, images that Ray publishes for the pinned Ray version (never the discontinued ray-ml
repository), a torch CUDA build that matches each image's CUDA, Ray pinned to one minor version in
pyproject.toml and to the same release everywhere it is installed, the project with its onnx extra
on every node, GPUs passed to the worker containers, MLflow on the head, no mount it does not
create, and IAM policies that allow what the autoscaler and the search call."""

import fnmatch
import json
import re
from importlib.metadata import version
from pathlib import Path

import ray
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
IAM = ROOT / "deploy" / "iam"
# rayproject/ray:<version>-py<3XX>-<platform>; platforms as Ray's image build names them
# (cpu, or cuXYZ for CUDA X.YZ, e.g. cu130), and -gpu (an alias of one cuXYZ image).
IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py3\d+-(?P<platform>cpu|gpu|cu\d{3})$")
# The CUDA platforms of the `ray` image in ray-project/ray's ray-images.json (cu13.0.0-cudnn is
# published as -cu130: ci/ray_ci/docker_container.py, and ray-project/ray#63972 pushes it).
RAY_IMAGE_PLATFORMS = {"cpu", "cu117", "cu118", "cu121", "cu123", "cu124", "cu125", "cu126", "cu128", "cu129",
                       "cu130"}
# The CUDA builds PyTorch publishes per release (pytorch/pytorch RELEASE.md; the 2.13 row came with
# pytorch/pytorch#187075: stable CUDA 12.6 and 13.0, experimental 13.2).
TORCH_CUDA_BUILDS = {"2.13": {"cu126", "cu130", "cu132"}}
TORCH_INDEX = re.compile(r"download\.pytorch\.org/whl/(?P<variant>cpu|cu\d{3})\b")
PIN = re.compile(r'(?P<name>torch|ray\[[a-z,]+\])==(?P<version>[0-9][0-9.]*)')


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


def _commands(raw: dict, role: str) -> list[str]:
    return raw.get("setup_commands", []) + raw.get(f"{role}_setup_commands", [])


def _pins(commands: list[str]) -> dict[str, set[str]]:
    """{'torch': {'2.13.0'}, 'ray': {'2.60.0'}} from the pip installs in ``commands``."""
    pins: dict[str, set[str]] = {}
    for c in commands:
        if "pip install" in c:
            for m in PIN.finditer(c):
                pins.setdefault(m["name"].split("[")[0], set()).add(m["version"])
    return pins


def _torch_variant(commands: list[str]) -> str | None:
    """cpu / cuXYZ of the torch install: its download.pytorch.org index, None for PyPI's default."""
    torch_cmd = next(c for c in commands if "pip install" in c and "torch==" in c)
    m = TORCH_INDEX.search(torch_cmd)
    return m["variant"] if m else None


def _dockerfile() -> tuple[str, list[str]]:
    """(FROM image, RUN commands) of docker/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert len(froms) == 1, f"docker/Dockerfile: one FROM expected, found {froms}"
    return froms[0], [ln[4:] for ln in lines if ln.upper().startswith("RUN ")]


def _requirement(name: str) -> Requirement:
    """pyproject.toml's requirement on ``name`` (read as text: tomllib needs Python 3.11)."""
    block = (ROOT / "pyproject.toml").read_text().split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    deps = re.findall(r'^\s*"([^"]+)",', block, flags=re.MULTILINE)
    return next(r for r in map(Requirement, deps) if r.name == name)


def _policy(name: str) -> dict:
    return json.loads((IAM / name).read_text())


def _allowed(policy: dict) -> list[tuple[str, list[str]]]:
    """(action pattern, resources) of every Allow statement."""
    out = []
    for st in policy["Statement"]:
        if st["Effect"] != "Allow":
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        out += [(a, resources) for a in actions]
    return out


def _resources_for(policy: dict, action: str) -> list[str]:
    hits = [res for pattern, res in _allowed(policy) if fnmatch.fnmatchcase(action, pattern)]
    return [r for res in hits for r in res]


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
        assert m["platform"] in RAY_IMAGE_PLATFORMS | {"gpu"}, f"{key}: Ray publishes no {m['platform']} image"
    workers = [v for k, v in images.items() if "worker" in k] or [images.get("image")]
    assert all(IMAGE.match(v)["platform"] != "cpu" for v in workers), "GPU workers need a CUDA image"


def test_every_node_installs_the_project_with_rays_version_and_gpu_nodes_get_cuda_torch():
    raw = _config()
    for role in ("head", "worker"):
        cmds = _commands(raw, role)
        install = [c for c in cmds if "pip install" in c and "/home/ray/raykd" in c]
        assert install, f"{role}: the project is not installed"
        assert f"ray[default,tune,train]=={ray.__version__}" in install[0]
        # A Pareto search exports students to ONNX on whichever node runs it.
        assert "/home/ray/raykd[onnx]" in install[0], f"{role}: the project is installed without its onnx extra"
        torch_at = next(i for i, c in enumerate(cmds) if "pip install" in c and "torch==" in c)
        assert torch_at < cmds.index(install[0]), f"{role}: torch must come first (a bare torch pulls the CUDA build)"
    assert _torch_variant(_commands(raw, "head")) == "cpu"
    assert _torch_variant(_commands(raw, "worker")) not in ("cpu", None), \
        "workers must install torch from a CUDA index (cuXYZ) so its CUDA is stated and checked"
    assert raw["file_mounts"].get("/home/ray/raykd") == "."


def test_worker_image_cuda_is_the_cuda_of_the_torch_build_installed_on_it():
    raw = _config()
    torch_version = {v for role in ("head", "worker") for v in _pins(_commands(raw, role))["torch"]}
    assert torch_version == {version("torch").split("+")[0]}, \
        f"cluster.yaml installs torch {torch_version}, the project is tested with {version('torch')}"
    minor = ".".join(next(iter(torch_version)).split(".")[:2])
    variant = _torch_variant(_commands(raw, "worker"))
    assert variant in TORCH_CUDA_BUILDS[minor], f"torch {minor} is not published for {variant}"
    workers = {k: v for k, v in _images(raw).items() if "worker" in k or k == "image"}
    for key, image in workers.items():
        platform = IMAGE.match(image)["platform"]
        assert platform == variant, f"{key}: {image} carries CUDA {platform}, the workers' torch is {variant}"


def test_ray_is_pinned_to_one_minor_and_every_install_agrees():
    req = _requirement("ray")
    installed = Version(ray.__version__)
    assert installed in req.specifier, f"pyproject.toml's {req} excludes the installed Ray {installed}"
    next_minor = Version(f"{installed.major}.{installed.minor + 1}.0")
    assert next_minor not in req.specifier, f"pyproject.toml's {req} lets pip take Ray {next_minor}"
    assert {"default", "tune", "train"} <= req.extras
    raw = _config()
    for role in ("head", "worker"):
        assert _pins(_commands(raw, role))["ray"] == {ray.__version__}, f"cluster.yaml's {role} pins another Ray"
    _, runs = _dockerfile()
    assert _pins(runs)["ray"] == {ray.__version__}, "docker/Dockerfile pins another Ray"


def test_pyarrow_floor_has_the_copy_files_deadlock_fix():
    pyarrow = _requirement("pyarrow")
    # apache/arrow#15233 (copy_files to S3 hangs with more files than IO threads), fixed in 19.0.
    assert Version("18.1.0") not in pyarrow.specifier and Version("19.0.0") in pyarrow.specifier


def test_worker_containers_get_the_gpus_and_the_head_asks_for_none():
    raw = _config()
    docker = raw["docker"]
    worker = docker.get("run_options", []) + docker.get("worker_run_options", [])
    worker += raw["available_node_types"]["gpu_worker"].get("docker", {}).get("worker_run_options", [])
    assert "--gpus all" in worker, "Ray adds --runtime=nvidia only when it detects that runtime; pass --gpus all"
    head = docker.get("run_options", []) + docker.get("head_run_options", [])
    assert not any("--gpus" in o for o in head), "the head is a CPU instance: --gpus would fail its container"


def test_dockerfile_builds_on_rays_image_with_the_matching_torch_and_the_project():
    image, runs = _dockerfile()
    m = IMAGE.match(image)
    assert m, f"docker/Dockerfile: FROM {image} is not a rayproject/ray:<version>-py3XX-cuXYZ tag"
    assert Version(m["version"]) in _requirement("ray").specifier and m["version"] == ray.__version__
    assert m["platform"] in RAY_IMAGE_PLATFORMS - {"cpu"}
    variant = _torch_variant(runs)
    assert variant == m["platform"], f"docker/Dockerfile: base image {m['platform']}, torch from {variant}"
    assert _pins(runs)["torch"] == _pins(_commands(_config(), "worker"))["torch"]
    assert any("/home/ray/raykd[onnx]" in r for r in runs), "docker/Dockerfile: the project without its onnx extra"
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(i for i, r in enumerate(runs) if "/home/ray/raykd" in r)
    assert torch_at < project_at, "docker/Dockerfile: torch must come before the project"


def test_iam_policies_allow_what_the_autoscaler_and_the_search_call():
    raw = _config()
    head, worker = _policy("head-policy.json"), _policy("worker-policy.json")
    assert _policy("ec2-trust.json")["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    # What Ray's AWS node provider calls from the head (ray/autoscaler/_private/aws/node_provider.py).
    for action in ("ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:TerminateInstances",
                   "iam:PassRole"):
        assert _resources_for(head, action), f"head-policy.json does not allow {action}"
    s3 = ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
    for name, policy in (("head", head), ("worker", worker)):
        for action in s3:
            assert _resources_for(policy, action), f"{name}-policy.json does not allow {action}"
    assert not _resources_for(worker, "ec2:RunInstances"), "workers launch nothing"
    # PassRole names the role behind the workers' instance profile (role and profile share a name).
    profile = raw["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    assert _resources_for(head, "iam:PassRole") == [profile.replace(":instance-profile/", ":role/")]
    # Terminating is limited to the instances Ray tags with this cluster's name.
    stop = next(st for st in head["Statement"] if "ec2:TerminateInstances" in st["Action"])
    assert stop["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"] == raw["cluster_name"]
    text = (ROOT / "cluster.yaml").read_text()
    assert "deploy/iam/head-policy.json" in text and "deploy/iam/worker-policy.json" in text


def test_mlflow_on_the_head_and_no_mount_assumed():
    raw = _config()
    assert any("mlflow server" in c for c in raw["head_start_ray_commands"])
    text = (ROOT / "cluster.yaml").read_text()
    assert "/mnt/" not in text and "efs" not in text.lower()
    assert "data.cache_dir" not in text  # the study travels through the bucket
