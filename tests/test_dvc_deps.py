"""dvc.yaml's dependencies are complete: each stage depends on every project module its command imports
(directly or through other modules, function-level imports included), so a code change always reruns it."""

import ast
import re
from pathlib import Path

import yaml

from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imports_of(file: Path) -> set[str]:
    """Project modules a file imports anywhere in it (absolute or relative)."""
    package = ".".join(file.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n)}
    return found


def closure(module: str) -> set[Path]:
    seen, todo = set(), [module]
    while todo:
        f = module_file(todo.pop())
        if f is None or f in seen:
            continue
        seen.add(f)
        todo += imports_of(f)
    return {f for f in seen if f.name != "__init__.py"}


def stage_command(cmd: str) -> str:
    name = re.match(r"\s*lmort\s+(\S+)", cmd).group(1)
    return main.get_command(None, name).callback.__module__


def test_every_stage_depends_on_every_module_its_command_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        deps = [str(d) for d in body.get("deps", [])]
        needed = closure(stage_command(body["cmd"]))
        files = [str(f.relative_to(ROOT)) for f in needed]
        lacking = sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
        if lacking:
            missing[name] = lacking
    assert not missing, "dvc.yaml misses code dependencies:\n" + "\n".join(f"  {k}: {v}" for k, v in missing.items())


def test_the_check_sees_function_level_imports():
    """sweep.py imports scaling's train_point inside a function: the closure must still contain scaling.py."""
    assert ROOT / "pipeline" / "tuner" / "scaling.py" in closure("pipeline.tuner.sweep")


def test_stage_files_import_only_the_library_and_the_library_never_imports_a_stage():
    """Each stage is a thin shell over pipeline/: no stage file imports another (only the `lmort` group, cli.py,
    collects them), and no library module reaches up into stages/."""
    for file in sorted((ROOT / "stages").glob("*.py")):
        if file.name in ("cli.py", "__init__.py"):
            continue
        assert not {m for m in imports_of(file) if m.startswith("stages")}, file.name
    for file in sorted((ROOT / "pipeline").rglob("*.py")):
        assert not {m for m in imports_of(file) if m.startswith("stages")}, file.name


def test_the_default_configuration_is_the_library_defaults():
    """One source of defaults: params.yaml (the default configuration) holds the dataclasses' own defaults for
    prepare, analyze, extract, the tuner and the training recipe (the click options read the same dataclasses),
    so a knob left out of a configuration or a command means what the default configuration says."""
    from dataclasses import asdict, replace

    from pipeline.activations.extract import ExtractConfig
    from pipeline.common.config import SIZES, TrainConfig, TunerConfig
    from pipeline.common.params import load_params, train_config
    from pipeline.data.prepare import PrepareConfig
    from pipeline.tuner.analyze import AnalyzeConfig

    params = load_params(ROOT / "params.yaml")
    assert train_config(params) == TrainConfig()
    assert PrepareConfig(**params["prepare"]) == PrepareConfig()
    assert AnalyzeConfig(**params["analyze"]) == AnalyzeConfig()
    # `extract.layers` (the extra layers) goes with each configuration's layer selection: no library default
    assert replace(ExtractConfig(**params["extract"]), layers="") == ExtractConfig()
    tuner = dict(params["tuner"])
    shape = SIZES[tuner.pop("size")]
    defaults = asdict(TunerConfig(llm_width=1, stream_layer=0, cross_layer=0))
    assert all(defaults[k] == v for k, v in {**shape, **tuner}.items()), (shape, tuner)
    # the scaling and sweep points' minimum steps, the analysis' lengths and dtype, the stores' chunking
    from pipeline.activations.extract import EXTRACT, ExtractSpec
    from pipeline.activations.store import CHUNK_TOKENS, SHARD_TOKENS
    from pipeline.common.config import MIN_STEPS, Template
    from pipeline.tuner.analyze import analyze

    assert params["scaling"]["min_steps"] == params["sweep"]["min_steps"] == MIN_STEPS
    import inspect

    signature = inspect.signature(analyze).parameters
    for knob in ("query_max_length", "passage_max_length", "compute_dtype"):
        assert signature[knob].default == getattr(EXTRACT, knob) == params["extract"][knob], knob
    spec = ExtractSpec("m", (0,), "queries", 8)
    assert (spec.dtype, spec.compute_dtype) == (params["extract"]["dtype"], params["extract"]["compute_dtype"])
    assert ExtractSpec("m", (0,), "queries", 8).chunk_tokens == CHUNK_TOKENS == params["extract"]["chunk_tokens"]
    assert ExtractSpec("m", (0,), "queries", 8).shard_tokens == SHARD_TOKENS
    assert Template().case == params["extract"]["case"] and Template().query == params["extract"]["query_template"]
    from pipeline.tuner.adapter import AdapterConfig

    adapter = {k: v for k, v in params["adapter"].items() if k != "max_steps"}  # the budget is the stage's
    assert all(getattr(AdapterConfig("m", 1), k) == v for k, v in adapter.items()), adapter


LAYERS = ["common", "data", "activations", "retrieval", "tuner", "interaction", "answers", "evaluation"]  # lowest first


def test_the_library_imports_run_one_way_across_its_subpackages():
    """pipeline/ is layered as the card's stages: common < data < activations (stage one) < retrieval < tuner (stage
    two) < answers < evaluation. A module imports from its own layer or lower ones, never a higher one."""
    upward = []
    for file in sorted((ROOT / "pipeline").rglob("*.py")):
        if file.parent == ROOT / "pipeline":
            continue
        here = LAYERS.index(file.parent.name)  # every subpackage is a layer
        for module in imports_of(file):
            parts = module.split(".")
            if len(parts) > 1 and parts[1] in LAYERS and LAYERS.index(parts[1]) > here:
                upward.append(f"{file.relative_to(ROOT)} imports {module}")
    assert not upward, "\n".join(upward)


def test_the_house_rules_hold():
    """No module over 400 lines and no function over 50 in pipeline/ or stages/ (the issue's measures)."""
    long_modules, long_functions = [], []
    for file in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "stages").glob("*.py")]):
        text = file.read_text()
        if text.count("\n") > 400:
            long_modules.append(str(file.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 50:
                long_functions.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long_modules and not long_functions, (long_modules, long_functions)
