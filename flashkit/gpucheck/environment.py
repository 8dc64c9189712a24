"""The environment section: the device, its clocks and driver, the versions, and the ceilings.

``python -m flashkit.gpucheck.environment --json PATH``. The ceilings (device-to-device copy
GB/s counting bytes read + written, bf16 8192^3 matmul TFLOP/s on random data) are the ones the
benchmark sections of the same run divide by (``--ceilings``).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess

# nvidia-smi fields read once (clocks as found: the card's settings are never changed).
_SMI_FIELDS = ("name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem",
               "clocks.max.mem", "power.draw", "power.limit", "temperature.gpu",
               "memory.used", "memory.total", "persistence_mode", "compute_mode")


def nvidia_smi() -> dict | str:
    """The fields above for GPU 0, or why they could not be read."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(_SMI_FIELDS)}",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return f"nvidia-smi exit {out.returncode}: {out.stderr.strip()[:200]}"
    return dict(zip(_SMI_FIELDS, (v.strip() for v in lines[0].split(","))))


def collect(device: str) -> dict:
    """Everything the section records (ceilings measured last, with warm clocks)."""
    import torch

    from flashkit.bench import record
    from flashkit.bench.ceilings import measure_ceilings
    from flashkit.doctor import collect as doctor

    rec = {"kind": "gpucheck-environment", **record.environment(device),
           "nvidia_smi": nvidia_smi() if device == "cuda" else None,
           "doctor": {k: v for k, v in doctor().items()}}
    if device == "cuda":
        rec["cuda"] = {"runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                       "arch_list": torch.cuda.get_arch_list(),
                       "device_count": torch.cuda.device_count()}
    rec["ceilings"] = measure_ceilings(device)
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashkit.gpucheck.environment",
                                description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="PATH", required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    args = p.parse_args(argv)
    import torch

    from flashkit.bench import record

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rec = collect(device)
    record.write_json(rec, args.json)
    c = rec["ceilings"]
    print(f"{rec['device']['name']}: copy {c['copy_gbps']:.0f} GB/s, {c['matmul_dtype']} matmul "
          f"{c['matmul_tflops']:.1f} TFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
