"""flashkit packaging. jit/, ops/ and bench/ install as flashkit.jit, flashkit.ops and
flashkit.bench; templates/ and
csrc/ ship inside the package (flashkit/templates, flashkit/csrc), where flashkit.jit finds them."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    text = open(os.path.join(HERE, "flashkit", "_version.py")).read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _packages():
    """flashkit.* from flashkit/, jit/ and ops/, plus the data folders as packages."""
    pkgs, dirs = [], {}
    for prefix, folder in (("flashkit", "flashkit"), ("flashkit.jit", "jit"), ("flashkit.ops", "ops"),
                           ("flashkit.bench", "bench")):
        dirs[prefix] = folder
        pkgs.append(prefix)
        for sub in find_packages(folder):
            pkgs.append(f"{prefix}.{sub}")
            dirs[f"{prefix}.{sub}"] = os.path.join(folder, *sub.split("."))
    for data in ("templates", "csrc"):
        for root, _, _ in os.walk(os.path.join(HERE, data)):
            rel = os.path.relpath(root, HERE)
            name = "flashkit." + rel.replace(os.sep, ".")
            pkgs.append(name)
            dirs[name] = rel
    return pkgs, dirs


PACKAGES, PACKAGE_DIR = _packages()
# transformers 5.23+ needs kernels>=0.18.2; 5.22.2 is the newest whose kernels range
# (>=0.17.2,<0.18) resolves on our index, and without it the Mamba-2 hub hooks are inert.
TRANSFORMERS = ["transformers==5.22.2", "kernels==0.17.2"]
DEBLOAT = ["pyelftools>=0.31", "lz4>=4", "zstandard>=0.22"]

setup(
    name="flashkit",
    version=_version(),
    description="JIT-specialized attention, SSM-scan and MoE kernels as drop-in torch ops",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={
        **{name: ["*.j2", "*.cuh", "*.h", "*.cpp", "*.cu"]
           for name in PACKAGES if name.split(".")[1:2] in (["templates"], ["csrc"])},
        "flashkit.ops.moe": ["configs/*.json"],  # tuned fused_moe configs per (E, N, K, device)
    },
    install_requires=[
        "torch>=2.6",
        "triton>=3.2; platform_system == 'Linux'",
        "jinja2>=3.1",
        "ninja>=1.11",
        "pybind11>=2.12",
        "filelock>=3.12",
        "rich>=13",
        "numpy>=1.24",
        "cuda-python>=12.6; platform_system == 'Linux'",
        "nvidia-cuda-nvrtc; platform_system == 'Linux'",
    ],
    extras_require={
        # flashkit.debloat: ELF headers, and the LZ4 / zstd compressed fatbin entries
        "debloat": DEBLOAT,
        "transformers": TRANSFORMERS,
        # the simulators' --plot (cache-sim, reshard-sim, placement-sim); `make demo` installs it
        "plot": ["matplotlib>=3.7"],
        "test": ["pytest>=8", "pytest-xdist>=3", "pytest-benchmark>=4", "hypothesis>=6", "ruff>=0.6",
                 *DEBLOAT, "nvidia-cuda-cuobjdump", *TRANSFORMERS,
                 # the chunk_ssd_scan benchmark's baseline; its tests check the mapping on CPU
                 "fla-core==0.6.0",
                 # the plot paths of cache-sim, reshard-sim and placement-sim
                 "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["flashkit = flashkit.cli:main"]},
)
