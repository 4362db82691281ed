"""Put on top of every notebook its "Open in Colab" and "Binder" badges and, as its first code cell, a cell that
installs the kit where it is not importable (Colab, Binder, a notebook opened alone) and does nothing in a checkout.

Idempotent: the cells it wrote before (found by their tags) are replaced, nothing else changes, so it can be run
again after any edit or merge of the notebooks:  python tools/add_open_in_cells.py [--check]
A fork changes REPO (and the README's badge line, which names the same repository).
"""
import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
REPO = "github.com/clip-kit/clip-kit"  # the course's repository; a fork puts its own here and in the README
BRANCH = "main"
BADGES_TAG, INSTALL_TAG = "open-in-badges", "install-kit"

INSTALL = f'''# On Colab, Binder or for a notebook opened on its own: install the kit (in a checkout this cell does nothing).
import importlib, importlib.util, os
if importlib.util.find_spec("clip_helpers") is None:
    kit = os.environ.get("CLIP_KIT_SOURCE", "git+https://{REPO}@{BRANCH}")  # where the kit comes from
    %pip install --quiet {{kit}}
    importlib.invalidate_caches()'''


def badges(name: str) -> str:
    colab = f"https://colab.research.google.com/{REPO.replace('github.com', 'github', 1)}/blob/{BRANCH}/notebooks/{name}"
    binder = f"https://mybinder.org/v2/gh/{REPO.split('/', 1)[1]}/{BRANCH}?labpath=notebooks%2F{name}"
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
            f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder})")


def tagged(cell, tag) -> bool:
    return tag in cell.metadata.get("tags", [])


def with_open_in_cells(notebook, name: str):
    """The notebook with its badge cell first and the install cell before its first code cell (old ones replaced)."""
    cells = [cell for cell in notebook.cells if not (tagged(cell, BADGES_TAG) or tagged(cell, INSTALL_TAG))]
    first_code = next((index for index, cell in enumerate(cells) if cell.cell_type == "code"), len(cells))
    number = name[:2]  # fixed cell ids: a rerun, or a rerun after a merge, writes the same cells
    cells.insert(first_code, nbformat.v4.new_code_cell(INSTALL, id=f"{number}-install", metadata={"tags": [INSTALL_TAG]}))
    cells.insert(0, nbformat.v4.new_markdown_cell(badges(name), id=f"{number}-badges", metadata={"tags": [BADGES_TAG]}))
    notebook.cells = cells
    return notebook


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", default=str(ROOT / "notebooks"))
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook lacks the cells")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(Path(args.notebooks).glob("[0-9][0-9]_*.ipynb")):
        before = path.read_text()
        notebook = with_open_in_cells(nbformat.reads(before, as_version=4), path.name)
        after = nbformat.writes(notebook) + "\n"
        if after != before:
            stale.append(path.name)
            if not args.check:
                path.write_text(after)
    verb = "lack the open-in cells" if args.check else "updated"
    print(f"{len(stale)} notebook(s) {verb}" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
