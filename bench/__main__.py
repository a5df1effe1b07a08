"""Run every benchmark module in bench/ (or those named on the command line) and print their figures.

Started by `make bench`, which provides throwaway PostgreSQL and Redis and a migrated database.
"""

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import django

RESULTS = Path(__file__).parent / "results"


def main(names: list[str]) -> int:
    django.setup()
    modules = names or sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_")
    )
    RESULTS.mkdir(exist_ok=True)
    for name in modules:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n== {name}: {module.__doc__.strip().splitlines()[0]}")
        figures = module.run()
        (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))
        for key, value in figures.items():
            print(f"  {key:<45} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
