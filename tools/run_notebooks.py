"""Run every notebooks/NN_*.ipynb top to bottom with papermill and print a one-screen summary.

    python tools/run_notebooks.py --profile offline [--only 03 --only 06] [--out outputs] [--data-dir data]
    python tools/run_notebooks.py --rehearsal --profile full:train_per_class=1,val_per_class=1 --data-dir rehearsal-data --out outputs/rehearsal/full

Executed copies go to <out>/notebooks/, figures to <out>/figures/, each notebook's key number to
<out>/metrics/NN_name.json. Exits non-zero if any notebook fails, naming it and the failing cell.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def use_this_python_kernel():
    """Make the "python3" kernelspec resolve to this interpreter's (JUPYTER_PATH outranks ~/.local kernels)."""
    prefix_share = Path(sys.prefix) / "share" / "jupyter"
    if (prefix_share / "kernels" / "python3").is_dir():
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(prefix_share), os.environ.get("JUPYTER_PATH")]))


def ipc_kernel_manager():
    """A kernel manager on local sockets: no "Kernel is running over TCP without encryption" warning per notebook."""
    from jupyter_client.manager import AsyncKernelManager

    sockets = os.path.join(tempfile.gettempdir(), f"clip-kit-kernel-{os.getpid()}")  # not in the working tree

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", sockets)
            super().__init__(**kwargs)

    return IPCKernelManager


def notebooks(folder, only=()):
    found = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [path for path in found if any(path.name.startswith(prefix) for prefix in only)]
    return found


def with_banner(path, banner):
    """The notebook at `path` with a markdown cell saying `banner` on top (nothing else changes)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(f"> **{banner}**"))
    return notebook


def run_one(path, out_dir, parameters, progress=True, banner=None):
    """(seconds, None) or (seconds, a one-line description of the failing cell). A banner goes on top of the copy."""
    import papermill

    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        source = with_banner(path, banner) if banner else str(path)
        papermill.execute_notebook(source, str(out_dir / "notebooks" / path.name), parameters=parameters,
                                   kernel_name="python3", progress_bar=progress, cwd=str(path.parent),
                                   kernel_manager_class=ipc_kernel_manager())
    except papermill.PapermillExecutionError as error:
        first_line = next((line for line in error.source.splitlines() if line.strip()), "")
        return time.time() - start, (f"cell [{error.exec_count}] starting {first_line.strip()!r} "
                                     f"(cell {error.cell_index} of the executed copy): {error.ename}: {error.evalue}")
    except Exception as error:  # the kernel died, timed out, or the notebook could not be read
        return time.time() - start, f"{type(error).__name__}: {error}"
    return time.time() - start, None


def key_number(out_dir, path):
    metrics = out_dir / "metrics" / f"{path.stem}.json"
    if not metrics.is_file():
        return "-"
    record = json.loads(metrics.read_text())
    value = record["value"]
    return f"{record['key']} = {value:.4g}" if isinstance(value, float) else f"{record['key']} = {value}"


def summary(rows):
    width = max(len(row[0]) for row in rows)
    lines = [f"{'notebook':<{width}}  {'profile':<8} {'seconds':>7}  key number"]
    lines += [f"{name:<{width}}  {profile:<8} {seconds:>7.0f}  {key}" for name, profile, seconds, key in rows]
    return "\n".join(lines)


def first_file_on(path):
    """The file (not a folder) at `path` or above it, which would stop mkdir only after a notebook's work."""
    return next((str(part) for part in [path, *path.parents] if part.exists() and not part.is_dir()), None)


def main(argv=None):
    from clip_helpers.profiles import PROFILES, get_profile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="auto",
                        help="smoke, offline, quick, full or auto (default); full:test_per_class=30,num_epochs=1 changes sizes")
    parser.add_argument("--only", action="append", default=[],
                        help="run only notebooks starting with this (repeatable)")
    parser.add_argument("--out", default="outputs", help="output folder (default outputs)")
    parser.add_argument("--data-dir", default="data", help="downloads and caches (default data)")
    parser.add_argument("--notebooks", default=str(ROOT / "notebooks"), help="folder of NN_*.ipynb")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    parser.add_argument("--rehearsal", action="store_true",
                        help="run on the stand-ins in --data-dir (clip_helpers.rehearsal; built there if missing), "
                             "checksums skipped; every output says it is a rehearsal")
    args = parser.parse_args(argv)
    if args.profile.partition(":")[0] not in ("auto", *PROFILES):
        parser.error(f"argument --profile: invalid choice: {args.profile!r} (choose from auto, {', '.join(PROFILES)}, "
                     f"optionally with sizes, e.g. full:test_per_class=30)")
    for name in ("out", "data_dir"):
        not_a_folder = first_file_on(Path(getattr(args, name)))
        if not_a_folder:
            parser.error(f"argument --{name.replace('_', '-')}: {not_a_folder} is a file, not a folder")

    from clip_helpers import downloads, rehearsal

    use_this_python_kernel()
    out_dir, data_dir = Path(args.out).resolve(), Path(args.data_dir).resolve()
    banner = None
    if args.rehearsal:
        rehearsal.build(data_dir)
        os.environ[downloads.SKIP_CHECKSUMS] = "1"  # the kernels papermill starts inherit it
        banner = rehearsal.BANNER
    try:
        profile, reason = get_profile(args.profile, data_dir)  # "auto" is decided once, for every notebook
    except ValueError as error:  # a size that is not a size field, or not a number
        parser.error(f"argument --profile: {error}")
    if banner:
        reason = f"{banner} {reason}"
    print(f"Profile {profile.name}: {reason}.", flush=True)
    paths = notebooks(args.notebooks, args.only)
    if not paths:
        parser.error(f"no notebooks matching {args.only or 'NN_*.ipynb'} in {args.notebooks}")
    sizes = args.profile.partition(":")[2]  # "full:test_per_class=30" reaches every notebook; "auto" as what it chose
    parameters = dict(profile=f"{profile.name}:{sizes}" if sizes else profile.name, profile_reason=reason, data_dir=str(data_dir), out_dir=str(out_dir),
                      interactive=False)
    rows, failures, start = [], [], time.time()
    for i, path in enumerate(paths, start=1):
        print(f"[{i}/{len(paths)}] {path.name} ...", flush=True)
        seconds, failure = run_one(path, out_dir, parameters, progress=not args.no_progress, banner=banner)
        print(f"[{i}/{len(paths)}] {path.name} {'FAILED' if failure else 'done'} in {seconds:.0f} s", flush=True)
        if failure:
            failures.append(f"{path.name}: {failure}")
        rows.append((path.stem, profile.name, seconds, "FAILED" if failure else key_number(out_dir, path)))
    if banner:
        rehearsal.stamp_figures(out_dir / "figures")
        print(f"\n{banner}")
    print()
    print(summary(rows))
    print(f"\n{len(paths)} notebooks in {time.time() - start:.0f} s; executed copies in {out_dir / 'notebooks'}, "
          f"figures in {out_dir / 'figures'}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
