"""What a user gets from `pip install .`: every package (the shipped configs too), every runtime
dependency, and a main job that runs from any folder and prints nothing about PyTorch."""

import configparser
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
TORCH_NOTICE = "PyTorch was not found"
# Python with torch hidden, as on a machine that never installed it (CI installs torch later): the
# path finder answers "no such module" for torch alone.
HIDE_TORCH = """
import importlib.machinery as m, sys
class NoTorch(m.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] == "torch" else super().find_spec(name, path, target)
sys.meta_path[sys.meta_path.index(m.PathFinder)] = NoTorch
"""


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def listed(option: str) -> list[str]:
    return [line.split("#")[0].strip() for line in setup_cfg()["options"][option].splitlines()]


def test_setup_cfg_lists_every_package_and_maps_configs():
    packages = {p for p in listed("packages") if p}
    found = {"gtr_turbo_jax"} | {
        f"gtr_turbo_jax.{p}" for p in setuptools.find_packages(ROOT / "gtr_turbo_jax")
    }
    assert packages == found | {"gtr_turbo_jax.configs"}
    assert "gtr_turbo_jax.configs = configs" in listed("package_dir")


def test_runtime_requirements_name_what_the_main_job_imports():
    names = {
        r.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        for r in listed("install_requires")
    }
    # jinja2: transformers' apply_chat_template needs it and does not declare it (a bare install
    # once crashed at the first prompt); six: gymnax imports it undeclared.
    assert {"jax", "flax", "optax", "orbax-checkpoint", "transformers", "jinja2", "six"} <= names


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {
        "JAX_PLATFORMS": "cpu"
    }


def run(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def run_python(code: str, cwd: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    return run([python, "-c", code], cwd)


def test_importing_the_library_without_torch_prints_no_torch_notice(tmp_path):
    # The control shows the notice is real on this machine: transformers alone prints it.
    control = run_python(HIDE_TORCH + "import transformers", tmp_path)
    assert control.returncode == 0, control.stderr
    assert TORCH_NOTICE in control.stderr
    done = run_python(
        HIDE_TORCH + "import gtr_turbo_jax.cli, gtr_turbo_jax.train.trainer, transformers\n"
        "import logging; logging.getLogger('transformers').warning('a real warning')",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert TORCH_NOTICE not in done.stdout + done.stderr
    assert "a real warning" in done.stderr  # other warnings still reach the user


@pytest.mark.slow
def test_an_installed_wheel_trains_the_smoke_job_from_any_folder(tmp_path):
    """The wheel, not the checkout: built without network, installed into a fresh venv whose only
    other packages are this environment's (a .pth line), run from an unrelated folder."""
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(wheels), str(ROOT)], check=True, timeout=600)
    (wheel,) = wheels.glob("gtr_turbo_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = run_python("import sysconfig; print(sysconfig.get_path('purelib'))", tmp_path, python)
    deps = sysconfig.get_path("purelib")  # this environment's packages (a folder, not a site dir:
    Path(site.stdout.strip(), "deps.pth").write_text(deps + "\n")  # its editable hook stays off)
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q"]
    subprocess.run([*install, str(wheel)], check=True, timeout=600)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run_python("import gtr_turbo_jax.configs as c; print(c.__file__)", elsewhere, python)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    script = str(venv / "bin" / "gtr-turbo")
    job = [
        script,
        "train",
        "--env=sokoban",
        "--smoke",
        "--workdir=run",
        "--config.train.tensorboard=False",
    ]
    done = run(job, elsewhere, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (elsewhere / "run" / "summary.json").is_file()
    assert TORCH_NOTICE not in done.stdout + done.stderr
