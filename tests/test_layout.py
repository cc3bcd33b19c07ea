"""The package reads as the pipeline (README, "Python API"): each stage imports only from the stages before it."""

import ast
from pathlib import Path

import vlmpref

PACKAGE = Path(vlmpref.__file__).parent
PIPELINE = ["data", "models", "plan", "train", "generate", "eval", "report"]
ON_TOP = {"cli", "ui", "demo"}  # front ends: nothing in the pipeline imports them


def _imports(path: Path):
    """(line, module) of every import in the file, those inside functions too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "vlmpref" and len(parts) > 1 else None


def test_no_stage_imports_a_later_stage_or_a_front_end():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0]
        if own not in PIPELINE:
            continue
        for line, module in _imports(path):
            stage = _stage(module)
            if stage in ON_TOP or (stage in PIPELINE and PIPELINE.index(stage) > PIPELINE.index(own)):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not upward, "\n".join(upward)
    assert (PACKAGE / "plan").is_dir() and not (PACKAGE / "models" / "estimate.py").exists()
