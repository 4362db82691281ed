"""Nothing the user made is written over or deleted: real downloads and runs by the rehearsal, a student's answers by
make_student, the source notebooks by run_notebooks; and a notebook runs the profile it is asked for, or fails."""
from pathlib import Path

import nbformat
import pytest

from clip_helpers import downloads
from clip_helpers.replication import rehearsal, reproduce
from clip_helpers.profiles import PROFILES, describe, get_profile
from conftest import load_tool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


run_notebooks = load_tool("run_notebooks")
make_student = load_tool("make_student")

PARAMETERS = 'profile = "auto"\nprofile_reason = ""\ndata_dir = "data"\nout_dir = "outputs"'


def write_notebook(path, *sources, tagged=True):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    if tagged:
        notebook.cells[0].metadata["tags"] = ["parameters"]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def no_weights(monkeypatch):
    """A small file in place of the 350 MB ViT-B/32 archive: these tests are about where the rehearsal writes."""
    def small(path, seed=0):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"stand-in weights")
        return path
    monkeypatch.setattr(rehearsal, "write_weights", small)


@pytest.fixture
def no_writes(monkeypatch):
    """Every stand-in writer fails the test: a folder that must be refused is never written to, even by a regression
    (one of these tests points the rehearsal at the project's own data/)."""
    for writer in ("write_weights", "write_cifar10", "write_caltech256"):
        monkeypatch.setattr(rehearsal, writer, lambda *args, name=writer, **kwargs: pytest.fail(f"{name} ran"))


# ---------------------------------------------------------------- the rehearsal keeps to its own folder

REAL = {"cifar-10-batches-py": "data_batch_1", "caltech256": "256_ObjectCategories/001.ak47/001_0001.jpg",
        "weights": "ViT-B-32.pt", "runs": "finetune/checkpoint.pt", "features": "cache.pt", "notes": "mine.txt"}


@pytest.mark.parametrize("held", list(REAL))
def test_the_rehearsal_refuses_a_folder_it_did_not_make_and_changes_nothing_there(held, tmp_path, no_writes):
    root = tmp_path / "downloads"
    real = root / held / REAL[held]
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a real download")
    before = snapshot(root)
    with pytest.raises(ValueError) as error:
        rehearsal.build(root, sizes="smoke")
    message = str(error.value)
    assert str(root) in message and "rehearsal-data/" in message and held in message
    assert snapshot(root) == before  # nothing written, nothing deleted


@pytest.mark.parametrize("where", ["project", "cwd"])
def test_the_rehearsal_refuses_the_data_folder_even_empty(where, tmp_path, monkeypatch, no_writes):
    if where == "project":
        root = ROOT / "data"
    else:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "data").mkdir()
        root = Path("data")
    listing = lambda: {p.name: p.stat().st_mtime_ns for p in root.iterdir()}  # noqa: E731  (data/ may hold GBs)
    before = listing()
    with pytest.raises(ValueError, match="rehearsal-data/"):
        rehearsal.build(root, sizes="smoke")
    assert listing() == before


def test_fresh_deletes_no_run_of_a_folder_the_rehearsal_did_not_make(tmp_path, no_writes, capsys):
    root = tmp_path / "data"
    checkpoint = root / "runs" / "finetune" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"a week of training")
    (root / "features").mkdir()
    with pytest.raises(SystemExit) as exit_:
        rehearsal.main(["--root", str(root), "--sizes", "smoke", "--fresh"])
    assert exit_.value.code != 0
    error = capsys.readouterr().err
    assert str(root) in error and "rehearsal-data/" in error
    assert checkpoint.read_bytes() == b"a week of training" and (root / "features").is_dir()
    assert not (root / "cifar-10-batches-py").exists()


def test_the_rehearsals_own_folder_is_used_again_and_fresh_empties_only_its_caches(tmp_path, no_weights):
    root = tmp_path / "rehearsal-data"
    rehearsal.main(["--root", str(root), "--sizes", "smoke"])
    assert (root / rehearsal.OWNER_MARKER).is_file()
    (root / "runs" / "run").mkdir(parents=True)
    (root / "features").mkdir()
    stand_ins = snapshot(root / "cifar-10-batches-py")
    rehearsal.main(["--root", str(root), "--sizes", "smoke", "--fresh"])
    assert not (root / "runs").exists() and not (root / "features").exists()
    assert snapshot(root / "cifar-10-batches-py") == stand_ins


def test_run_notebooks_rehearses_in_rehearsal_data_by_default(tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    built = []

    def build(root, *args, **kwargs):
        built.append(Path(root))
        raise Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rehearsal, "build", build)
    write_notebook(tmp_path / "notebooks" / "01_x.ipynb", PARAMETERS)
    with pytest.raises(Stop):
        run_notebooks.main(["--rehearsal", "--profile", "smoke", "--notebooks", str(tmp_path / "notebooks"),
                            "--out", str(tmp_path / "outputs")])
    assert built == [tmp_path / "rehearsal-data"]


def test_reproduce_rehearses_in_rehearsal_data_by_default_and_refuses_data(tmp_path, no_writes, monkeypatch):
    monkeypatch.setenv(downloads.SKIP_CHECKSUMS, "0")  # restored after the test, whatever reproduce sets
    assert reproduce.parse_args(["--rehearsal"]).data_dir == "rehearsal-data"
    assert reproduce.parse_args([]).data_dir == "data"
    real = tmp_path / "data" / "weights" / "ViT-B-32.pt"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"OpenAI's weights")
    with pytest.raises(SystemExit, match="rehearsal-data/"):
        reproduce.main(["--rehearsal", "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out")])
    assert real.read_bytes() == b"OpenAI's weights"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["weights"]


# ---------------------------------------------------------------- make_student keeps a student's work

def student_edition(tmp_path, *extra):
    notebooks = tmp_path / "notebooks"
    write_notebook(notebooks / "01_x.ipynb", 'out_dir = "outputs"',
                   "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", *extra)
    return notebooks, tmp_path / "student"


def test_make_student_keeps_a_notebook_the_student_has_edited_unless_forced(tmp_path, capsys):
    notebooks, out = student_edition(tmp_path)
    args = ["--notebooks", str(notebooks), "--out", str(out)]
    assert make_student.main(args) == 0
    edition = (out / "01_x.ipynb").read_text()
    notebook = nbformat.read(out / "01_x.ipynb", as_version=4)
    notebook.cells[1].source = "def f():\n    return 1  # my answer"
    nbformat.write(notebook, out / "01_x.ipynb")
    answered = (out / "01_x.ipynb").read_text()
    capsys.readouterr()
    assert make_student.main(args) == 1
    error = capsys.readouterr().err
    assert "01_x.ipynb" in error and "--force" in error and "nothing was written" in error
    assert (out / "01_x.ipynb").read_text() == answered
    assert make_student.main(args + ["--force"]) == 0
    assert (out / "01_x.ipynb").read_text() == edition


def test_make_student_rewrites_a_notebook_nobody_edited(tmp_path):
    notebooks, out = student_edition(tmp_path)
    make_student.make_student(notebooks, out)
    student_edition(tmp_path, "print('a new cell')")  # the instructor changes the notebook
    make_student.make_student(notebooks, out)
    assert "print('a new cell')" in (out / "01_x.ipynb").read_text()


def test_make_student_keeps_a_notebook_it_never_wrote(tmp_path):
    notebooks, out = student_edition(tmp_path)
    out.mkdir()
    (out / "01_x.ipynb").write_text("a student's own notebook")
    with pytest.raises(ValueError, match="01_x.ipynb"):
        make_student.make_student(notebooks, out)
    assert (out / "01_x.ipynb").read_text() == "a student's own notebook"


# ---------------------------------------------------------------- run_notebooks never writes over its sources

@pytest.mark.parametrize("out", ["project", "notebooks", "above"])
def test_run_notebooks_refuses_an_output_folder_that_is_or_holds_the_notebooks(out, tmp_path, monkeypatch, capsys):
    project = tmp_path / "a" / "project"
    source = write_notebook(project / "notebooks" / "01_x.ipynb", PARAMETERS)
    before = source.read_bytes()
    monkeypatch.setattr(run_notebooks, "run_one", lambda *args, **kwargs: pytest.fail("a notebook ran"))
    folder = {"project": project, "notebooks": project / "notebooks", "above": tmp_path}[out]
    with pytest.raises(SystemExit):
        run_notebooks.main(["--profile", "smoke", "--notebooks", str(project / "notebooks"), "--out", str(folder),
                            "--data-dir", str(tmp_path / "data")])
    assert "source notebooks" in capsys.readouterr().err
    assert source.read_bytes() == before


# ---------------------------------------------------------------- the profile asked for is the profile that ran

def fake_run(prints):
    """run_one's stand-in: an executed copy whose cell printed prints(parameters)."""
    def run_one(path, out_dir, parameters, progress=True, banner=None):
        cell = nbformat.v4.new_code_cell("lesson = course.start(...)")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=prints(parameters))]
        notebook = nbformat.v4.new_notebook(cells=[cell])
        (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out_dir / "notebooks" / path.name)
        return 0.0, None
    return run_one


def as_course_start(parameters):
    return describe(get_profile(parameters["profile"])[0], parameters["profile_reason"]) + "\n"


def run(tmp_path, profile):
    write_notebook(tmp_path / "notebooks" / "01_x.ipynb", PARAMETERS)
    return run_notebooks.main(["--profile", profile, "--notebooks", str(tmp_path / "notebooks"),
                               "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), "--no-progress"])


def test_a_notebook_without_a_parameters_cell_is_not_run(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(run_notebooks, "run_one", lambda path, *args, **kwargs: ran.append(path) or (0.0, None))
    write_notebook(tmp_path / "notebooks" / "01_ok.ipynb", PARAMETERS)
    write_notebook(tmp_path / "notebooks" / "02_untagged.ipynb", PARAMETERS, tagged=False)
    with pytest.raises(SystemExit):
        run_notebooks.main(["--profile", "smoke", "--notebooks", str(tmp_path / "notebooks"),
                            "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    error = capsys.readouterr().err
    assert "02_untagged.ipynb" in error and "'parameters'" in error and "01_ok" not in error
    assert ran == []  # checked before any notebook ran


@pytest.mark.parametrize("printed, problem", [
    (lambda parameters: describe(PROFILES["smoke"], "smoke was asked for"), "ran profile smoke, not offline"),
    (lambda parameters: "no profile here\n", "printed no 'Profile: ...' line"),
    (lambda parameters: "Profile: offline (x).\nProfile: smoke (y).\n", "ran profile offline and smoke"),
])
def test_the_runner_fails_a_notebook_that_did_not_print_the_profile_asked_for(printed, problem, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setattr(run_notebooks, "run_one", fake_run(printed))
    assert run(tmp_path, "offline") == 1
    assert f"FAILED 01_x.ipynb: it {problem}" in capsys.readouterr().err


def test_the_runner_fails_a_notebook_that_printed_other_sizes(tmp_path, monkeypatch, capsys):
    unsized = lambda parameters: describe(PROFILES["smoke"], parameters["profile_reason"])  # noqa: E731
    monkeypatch.setattr(run_notebooks, "run_one", fake_run(unsized))
    assert run(tmp_path, "smoke:num_epochs=1") == 1
    assert "other sizes" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["smoke", "offline", "smoke:num_epochs=1"])
def test_the_runner_passes_a_notebook_that_printed_the_profile_asked_for(profile, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_notebooks, "run_one", fake_run(as_course_start))
    assert run(tmp_path, profile) == 0
    assert "FAILED" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_notebook_that_sets_its_own_profile_fails_in_a_real_run(tmp_path, capsys):
    start = ('from clip_helpers import course\nlesson = course.start("{name}", profile, profile_reason=profile_reason, '
             'data_dir=data_dir, out_dir=out_dir, interactive=False)')
    write_notebook(tmp_path / "notebooks" / "01_asked.ipynb", PARAMETERS, start.format(name="01_asked"))
    write_notebook(tmp_path / "notebooks" / "02_own.ipynb", PARAMETERS, 'profile = "smoke"',
                   start.format(name="02_own"))
    status = run_notebooks.main(["--profile", "offline", "--notebooks", str(tmp_path / "notebooks"),
                                 "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), "--no-progress"])
    error = capsys.readouterr().err
    assert status == 1
    assert "FAILED 02_own.ipynb: it ran profile smoke, not offline" in error and "01_asked" not in error
