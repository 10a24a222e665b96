"""What each install weighs: `pip install chit` (the agent) and `pip install 'chit[server]'`.

    python -m tests.packaging.footprint

Builds the wheel from this checkout, installs it into two fresh virtualenvs
(the server extra from the package index) and prints, for each, the packages
installed besides pip and setuptools and their size on disk. The README's
figures come from here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6


def measure(wheel: Path, extra: str, directory: Path) -> tuple[list[str], float]:
    venv.create(directory, with_pip=True)
    pip = str(directory / "bin" / "pip")
    baseline = size_mb(directory)
    subprocess.run([pip, "install", "--quiet", f"{wheel}{extra}"], check=True)
    listed = json.loads(subprocess.run([pip, "list", "--format", "json"], capture_output=True, text=True, check=True).stdout)
    packages = sorted(p["name"] for p in listed if p["name"].lower() not in ("pip", "setuptools"))
    return packages, size_mb(directory) - baseline


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        print("building the wheel …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work), str(ROOT)], check=True)
        (wheel,) = work.glob("chit-*.whl")
        rows = []
        for name, label, extra in (("agent", "pip install chit (the agent)", ""), ("server", "pip install 'chit[server]'", "[server]")):
            print(f"installing {label} …", file=sys.stderr)
            packages, megabytes = measure(wheel, extra, work / name)
            rows.append((label, packages, megabytes))
    print(f"{'install':36} {'packages':>8} {'MB':>7}")
    for label, packages, megabytes in rows:
        print(f"{label:36} {len(packages):>8} {megabytes:>7.1f}")
    for label, packages, _ in rows:
        print(f"\n{label}: {', '.join(packages)}")


if __name__ == "__main__":
    main()
