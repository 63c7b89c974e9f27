"""CPU seconds a job process spends importing what it trains with, with the cyclic collector on (as
Python starts) and paused then frozen (oner_lab/startup.py, what a job process does).

    python benchmarks/startup_time.py [--repeats 5]

Each measurement is a fresh interpreter importing the job's modules (oner_lab.launch.job, then
oner_lab.train and the augmentations: MLflow, submitit, torch, timm, torchvision); prints the median
and the spread of each, and the saving per job process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

IMPORTS = "import oner_lab.launch.job, oner_lab.train, oner_lab.data.augment"
MEASURE = """
import gc, time
paused = {paused}
started = time.process_time()
if paused:
    gc.disable()
{imports}
if paused:
    gc.freeze(); gc.enable()
print(time.process_time() - started)
"""


def measure(paused: bool) -> float:
    code = MEASURE.format(paused=paused, imports=IMPORTS)
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    on, paused = [], []
    for _ in range(repeats):  # alternating, so a busy moment of the machine hits both
        on.append(measure(False))
        paused.append(measure(True))
    for name, values in (("collector on", on), ("paused, then frozen", paused)):
        print(f"{name:>20}: {statistics.median(values):.2f} CPU-s (min {min(values):.2f}, max {max(values):.2f})")
    saved = statistics.median(on) - statistics.median(paused)
    print(f"{'saved per process':>20}: {saved:.2f} CPU-s ({saved / statistics.median(on):.0%})")


if __name__ == "__main__":
    main()
