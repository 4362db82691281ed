"""Run every notebooks/NN_*.ipynb top to bottom with papermill and print a one-screen summary.

    python tools/run_notebooks.py --profile offline [--only 03 --only 06] [--out outputs] [--data-dir data]
    python tools/run_notebooks.py --rehearsal --profile full:train_per_class=1,val_per_class=1 --out outputs/rehearsal/full

Executed copies go to <out>/notebooks/, figures to <out>/figures/, each notebook's key number to
<out>/metrics/NN_name.json, each notebook's wall time (the latest successful run of each, not in a rehearsal) to
<out>/run_times.json, which notebook 00 prints. Exits non-zero if any notebook fails, naming it and the failing cell, or if it did
not run the profile asked for (what its first cell printed). A notebook without a cell tagged `parameters` is not
run, nor is any notebook when --out is or holds the source notebooks. --rehearsal reads its stand-ins from
rehearsal-data/ (or a --data-dir of the rehearsal's own), never from data/.
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


def kernel_manager(os_name=os.name):
    """A kernel manager on local sockets where there are some (no "Kernel is running over TCP without encryption"
    warning per notebook); on Windows, which has no ZMQ ipc transport, jupyter_client's own TCP one."""
    from jupyter_client.manager import AsyncKernelManager

    if os_name == "nt":
        return AsyncKernelManager
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
                                   kernel_manager_class=kernel_manager())
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


def record_time(out_dir, path, profile_name, seconds):
    """Add one notebook's wall time to <out_dir>/run_times.json (notebook 00 prints it): the latest run of each."""
    from datetime import datetime, timezone
    from clip_helpers.files import write_text_atomically

    record_path = out_dir / "run_times.json"
    try:
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except ValueError:  # a damaged record holds nothing worth keeping: start it again
        record = {}
    record[path.stem] = {"profile": profile_name, "seconds": round(seconds, 1), "cpus": os.cpu_count(),
                         "load_1min": round(os.getloadavg()[0], 1),  # a busy machine's times are not a quiet one's
                         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_text_atomically(record_path, json.dumps(record, indent=1, sort_keys=True))


def summary(rows):
    width = max(len(row[0]) for row in rows)
    lines = [f"{'notebook':<{width}}  {'profile':<8} {'seconds':>7}  key number"]
    lines += [f"{name:<{width}}  {profile:<8} {seconds:>7.0f}  {key}" for name, profile, seconds, key in rows]
    return "\n".join(lines)


def first_file_on(path):
    """The file (not a folder) at `path` or above it, which would stop mkdir only after a notebook's work."""
    return next((str(part) for part in [path, *path.parents] if part.exists() and not part.is_dir()), None)


def output_problem(out_dir, notebooks_dir):
    """Why `out_dir` cannot take the executed copies (<out>/notebooks/), or None: it must not be, or hold, the
    source notebooks' folder, whose notebooks the copies would overwrite."""
    out_dir, notebooks_dir = Path(out_dir).resolve(), Path(notebooks_dir).resolve()
    if notebooks_dir in (out_dir, (out_dir / "notebooks").resolve()) or notebooks_dir.is_relative_to(out_dir):
        return (f"{out_dir} is or holds the source notebooks' folder {notebooks_dir}; the executed copies (in "
                f"<out>/notebooks/) could overwrite the notebooks. Choose an output folder outside it (the default "
                f"is outputs)")
    return None


def parameters_problem(path):
    """Why the notebook at `path` cannot be given its parameters, or None. Without a cell tagged `parameters`
    papermill puts the values above the notebook's own, which then win: it would run with its own profile."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) == 1 and cells[tagged[0]].cell_type == "code":
        return None
    found = "no cell" if not tagged else f"{len(tagged)} cells ({', '.join(str(i + 1) for i in tagged)})"
    return (f"{path.name} has {found} tagged 'parameters' where it needs one code cell, so it would run with its "
            f"own values, not the profile asked for. Tag the code cell that sets profile, data_dir and out_dir "
            f"(Jupyter: View > Cell toolbar > Tags)")


def printed_text(path):
    """Everything the executed notebook at `path` printed to stdout, cell by cell."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    return "\n".join("".join(output.get("text", "") for output in cell.get("outputs", [])
                             if output.get("output_type") == "stream" and output.get("name") == "stdout")
                     for cell in cells if cell.cell_type == "code")


def profile_problem(executed, profile, reason):
    """Why the executed notebook did not run `profile` as asked (reason: the one given to it), or None. It is
    read from the paragraph course.start prints (profiles.describe): the profile's name, then its meaning."""
    import re

    from clip_helpers.profiles import describe

    printed = printed_text(executed)
    names = re.findall(r"^Profile: (\S+) \(", printed, flags=re.MULTILINE)
    if not names:
        return ("it printed no 'Profile: ...' line (course.start prints one), so which profile it ran is unknown; "
                "start it with course.start(..., profile, profile_reason=profile_reason, ...)")
    if set(names) != {profile.name}:
        return (f"it ran profile {' and '.join(sorted(set(names)))}, not {profile.name} as asked: does a later cell "
                f"set profile again, or does course.start not get the parameters cell's profile?")
    if describe(profile, reason) not in printed:
        return (f"it printed profile {profile.name} with other sizes or another reason than asked; expected "
                f"{describe(profile, reason)!r}")
    return None


def parsed_args(argv):
    """The command line, checked before any notebook runs."""
    from clip_helpers.profiles import PROFILES
    from clip_helpers.replication.rehearsal import DEFAULT_ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="auto",
                        help="smoke, offline, quick, full or auto (default); full:test_per_class=30,num_epochs=1 changes sizes")
    parser.add_argument("--only", action="append", default=[],
                        help="run only notebooks starting with this (repeatable)")
    parser.add_argument("--out", default="outputs", help="output folder (default outputs)")
    parser.add_argument("--data-dir", default=None,
                        help=f"downloads and caches (default data; with --rehearsal, {DEFAULT_ROOT})")
    parser.add_argument("--notebooks", default=str(ROOT / "notebooks"), help="folder of NN_*.ipynb")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    parser.add_argument("--rehearsal", action="store_true",
                        help="run on the stand-ins in --data-dir (clip_helpers.replication.rehearsal; built there if missing), "
                             "checksums skipped; every output says it is a rehearsal")
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or (DEFAULT_ROOT if args.rehearsal else "data")  # stand-ins never go in data/
    if args.profile.partition(":")[0] not in ("auto", *PROFILES):
        parser.error(f"argument --profile: invalid choice: {args.profile!r} (choose from auto, {', '.join(PROFILES)}, "
                     f"optionally with sizes, e.g. full:test_per_class=30)")
    for name in ("out", "data_dir"):
        not_a_folder = first_file_on(Path(getattr(args, name)))
        if not_a_folder:
            parser.error(f"argument --{name.replace('_', '-')}: {not_a_folder} is a file, not a folder")
    if output_problem(args.out, args.notebooks):
        parser.error(f"argument --out: {output_problem(args.out, args.notebooks)}")
    args.paths = notebooks(args.notebooks, args.only)
    if not args.paths:
        parser.error(f"no notebooks matching {args.only or 'NN_*.ipynb'} in {args.notebooks}")
    problems = list(filter(None, map(parameters_problem, args.paths)))
    if problems:
        parser.error("not run, nothing was: " + "; ".join(problems))
    return parser, args


def main(argv=None):
    from clip_helpers import downloads
    from clip_helpers.replication import rehearsal
    from clip_helpers.profiles import get_profile

    parser, args = parsed_args(argv)
    use_this_python_kernel()
    out_dir, data_dir = Path(args.out).resolve(), Path(args.data_dir).resolve()
    banner = None
    if args.rehearsal:
        try:
            rehearsal.build(data_dir)
        except rehearsal.NotARehearsalFolder as error:
            parser.error(f"argument --data-dir: {error}")
        os.environ[downloads.SKIP_CHECKSUMS] = "1"  # the kernels papermill starts inherit it
        banner = rehearsal.BANNER
    try:
        profile, reason = get_profile(args.profile, data_dir)  # "auto" is decided once, for every notebook
    except ValueError as error:  # a size that is not a size field, or not a number
        parser.error(f"argument --profile: {error}")
    if banner:
        reason = f"{banner} {reason}"
    print(f"Profile {profile.name}: {reason}.", flush=True)
    sizes = args.profile.partition(":")[2]  # "full:test_per_class=30" reaches every notebook; "auto" as what it chose
    parameters = dict(profile=f"{profile.name}:{sizes}" if sizes else profile.name, profile_reason=reason,
                      data_dir=str(data_dir), out_dir=str(out_dir), interactive=False)
    return run_all(args.paths, out_dir, parameters, profile, not args.no_progress, banner)


def run_all(paths, out_dir, parameters, profile, progress, banner):
    """Run each notebook, check it ran `profile`, print the summary; the exit status (1 if any failed)."""
    from clip_helpers.replication import rehearsal

    rows, failures, start = [], [], time.time()
    for i, path in enumerate(paths, start=1):
        print(f"[{i}/{len(paths)}] {path.name} ...", flush=True)
        seconds, failure = run_one(path, out_dir, parameters, progress=progress, banner=banner)
        if not failure:
            failure = profile_problem(out_dir / "notebooks" / path.name, profile, parameters["profile_reason"])
        print(f"[{i}/{len(paths)}] {path.name} {'FAILED' if failure else 'done'} in {seconds:.0f} s", flush=True)
        if failure:
            failures.append(f"{path.name}: {failure}")
        elif not banner:  # a rehearsal's times are not the course's
            record_time(out_dir, path, profile.name, seconds)
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
