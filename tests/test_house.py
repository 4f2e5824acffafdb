"""The house's rules: the contracts of [tool.importlinter] hold, and the single modules they cannot see keep them too."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = {"core", "webapp", "worker", "gateway", "tasks", "wsgi"}


def top_level_imports(path):
    """The pdfqueue parts a file imports (anywhere in it, deferred imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PARTS


def test_the_import_contracts_hold():
    linter = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(linter)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and " 0 broken" in result.stdout


def test_the_single_modules_keep_to_their_side():
    assert top_level_imports(REPO / "tasks.py") <= {"core", "worker"}  # the worker's Huey tasks
    assert top_level_imports(REPO / "wsgi.py") <= {"webapp"}
    assert top_level_imports(REPO / "gunicorn.conf.py") <= {"core", "webapp"}
    assert top_level_imports(REPO / "gateway" / "gunicorn.conf.py") <= {"gateway"}


def test_the_web_enqueues_the_task_the_worker_runs():
    import tasks
    from core import queue
    assert queue.huey._registry.task_to_string(type(tasks.process_job.s("x"))) == queue.PROCESS_JOB
