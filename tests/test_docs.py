"""The README and docs/ say what works: every command they show runs as written, every link lands.

Every ``python tools/<x>.py ...`` (or ``torchrun ... tools/<x>.py ...``) line of README.md,
CHANGELOG.md, datasets/README.md and docs/*.md, in code blocks and in inline code, is checked
without running it: a Hydra tool's overrides are composed with its own config (``-m`` sweeps
expanded value by value, ``+key=`` and quoted values as the shell passes them), so a renamed key
or option fails here; an argparse tool parses its arguments (no abbreviations); ``soak.py``
composes the training config with what it passes on. A line whose comment says ``# rejected: ...`` documents a mistake and must stay one. Every
``make <target>`` names a Makefile target, and every relative link (with its ``#anchor``) points
to a file (and a heading) that exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.load_file import load_tool
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detector_cli import cli, profile, soak

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "datasets" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
# Hydra launcher plugins named in the docs: optional extras, absent from the dev install
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


@dataclass(frozen=True)
class Command:
    where: str         # "docs/usage.md:12"
    text: str          # the command as written (continuation lines joined)
    tool: str          # "train_net.py"
    args: tuple        # its arguments, as the shell passes them
    rejected: bool     # documented as a mistake ("# rejected: ...")


# ---------------------------------------------------------------------------- reading markdown
def _lines(path: Path) -> list[tuple[int, str, str | None]]:
    """(line number, text, fence info) per logical line; fence info is None outside code blocks.
    Continuation lines (a trailing backslash) are joined inside code blocks."""
    out, fence, pending = [], None, None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip().lower() if fence is None else None
            continue
        if fence is not None and pending is not None:
            start, text = pending
            line, number = text + " " + stripped, start
        if fence is not None and line.endswith("\\"):
            pending = (number, line[:-1].rstrip())
            continue
        pending = None
        out.append((number, line, fence))
    return out


def _prose(path: Path) -> list[tuple[int, str]]:
    """Paragraphs outside code blocks as (first line number, text joined with spaces)."""
    paragraphs, current = [], None
    for number, line, fence in _lines(path):
        if fence is not None or not line.strip():
            current = None
            continue
        if current is None:
            current = [number, line]
            paragraphs.append(current)
        else:
            current[1] += " " + line
    return [(number, text) for number, text in paragraphs]


def _inline_code(path: Path) -> list[tuple[int, str]]:
    return [(number, span) for number, text in _prose(path)
            for span in re.findall(r"`([^`]+)`", text)]


def _shell_snippets(path: Path) -> list[tuple[int, str]]:
    """Every shell line of a code block and every inline code span, with its line number."""
    blocks = [(n, line) for n, line, fence in _lines(path) if fence in SHELL_FENCES]
    return blocks + _inline_code(path)


# ---------------------------------------------------------------------------- commands
def _command(where: str, text: str) -> Command | None:
    """The tool command in ``text`` (None if there is none): the ``tools/<x>.py`` argument of a
    ``python`` / ``torchrun`` invocation and what follows it, up to a comment or ``&``."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    for i, word in enumerate(words):
        match = re.fullmatch(r"(?:\./)?tools/(\w+\.py)", word)
        launcher = [w for w in words[:i] if re.fullmatch(r"python3?|torchrun", w)]
        if match and launcher:
            args = [w for w in words[i + 1:] if w != "&"]
            rejected = re.search(r"\s#\s*rejected:", text) is not None
            return Command(where, text.strip(), match.group(1), tuple(args), rejected)
    return None


def _commands() -> list[Command]:
    found = {}
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for number, text in _shell_snippets(path):
            command = _command(f"{name}:{number}", text)
            if command is not None:
                found.setdefault((command.tool, command.args, command.rejected), command)
    return list(found.values())


COMMANDS = _commands()


def _tool_source(tool: str) -> str:
    path = TOOLS / tool
    assert path.is_file(), f"tools/{tool} does not exist"
    return path.read_text()


def _hydra_config_name(tool: str) -> str | None:
    match = re.search(r'@hydra\.main\([^)]*config_name="(\w+)"', _tool_source(tool))
    return match.group(1) if match else None


def _expand_sweeps(args: list[str], *, multirun: bool) -> list[list[str]]:
    """One override list per job of a sweep (one list for a single run)."""
    parsed = OverridesParser.create().parse_overrides(args)
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            assert multirun, f"{override.input_line!r} is a sweep: the command needs -m"
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


def _skip_without_launcher(args: list[str]) -> None:
    for arg in args:
        if arg.startswith("hydra/launcher="):
            module, extra = LAUNCHER_PLUGINS.get(arg.split("=", 1)[1], (None, None))
            if module is None:
                continue
            if importlib.util.find_spec(module.split(".")[0]) is None or \
                    importlib.util.find_spec(module) is None:
                pytest.skip(f"{arg} needs the optional extra: pip install -e '.[{extra}]'")


def _compose_all(config_name: str, args: list[str]) -> int:
    """Compose ``config_name`` with every job's overrides and resolve it; returns the job count."""
    flags = {"-m", "--multirun"}
    multirun = any(arg in flags for arg in args)
    # as the tools do before Hydra parses their command line: paths with = or , as typed
    overrides = cli.quote_path_overrides([arg for arg in args if arg not in flags])
    assert not [a for a in overrides if a.startswith("-")], f"unknown Hydra flags in {args}"
    _skip_without_launcher(overrides)
    jobs = _expand_sweeps(overrides, multirun=multirun)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for job in jobs:
            cfg = compose(config_name=config_name, overrides=job)
            OmegaConf.to_container(cfg, resolve=True)
    return len(jobs)


# how Hydra and OmegaConf refuse an override (an unknown key or option, the syntax); argparse exits.
# Any other exception is a bug in the check itself and must fail the test, not count as a refusal.
REJECTIONS = (HydraException, OmegaConfBaseException, SystemExit)


class _Parsed(Exception):
    """Raised in place of running the tool once its arguments are parsed."""


def _parse_with_argparse(tool: str, args: list[str], monkeypatch) -> argparse.Namespace:
    """Run the tool's ``main`` until its ArgumentParser has parsed ``args``, then stop."""
    module = load_tool(tool)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        self.allow_abbrev = False  # the docs spell options out: a prefix must not hide a rename
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(TOOLS / tool), *args])
    with pytest.raises(_Parsed) as parsed:
        module.main()
    return parsed.value.args[0]


def _check(command: Command, monkeypatch) -> None:
    args = list(command.args)
    if command.tool == "soak.py":  # its own keys, then training overrides on experiment=focal
        own = soak.OWN_KEYS  # detector_cli.soak: what tools/soak.py runs
        args = ["experiment=focal", *(a for a in args if a.split("=", 1)[0] not in own)]
        _compose_all("train", args)
        return
    if command.tool == "profile_step.py":  # its options (argparse), then overrides of train.yaml
        parsed = profile.parse_args(args)  # detector_cli.profile: what tools/profile_step.py runs
        _compose_all("train", ["experiment=focal", *parsed.overrides])
        return
    config_name = _hydra_config_name(command.tool)
    if config_name is not None:
        _compose_all(config_name, args)
    elif "argparse" in _tool_source(command.tool):
        _parse_with_argparse(command.tool, args, monkeypatch)
    else:
        pytest.fail(f"{command.where}: tools/{command.tool} is neither a Hydra nor an argparse "
                    "tool; teach tests/test_docs.py how to check it")


def test_the_docs_show_commands_of_every_kind():
    """The extraction finds what the docs hold (a broken extractor would pass every check)."""
    tools = {c.tool for c in COMMANDS}
    assert {"train_net.py", "eval.py", "predict.py", "export.py", "serve.py", "compare.py",
            "inspect_model.py", "bench_model.py", "bench_ops.py", "bench_export.py",
            "soak.py", "profile_step.py"} <= tools
    assert any("-m" in c.args for c in COMMANDS)
    assert any(c.text.startswith("torchrun") for c in COMMANDS)
    assert any(c.rejected for c in COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.rejected],
                         ids=lambda c: f"{c.where} {c.text[:60]}")
def test_documented_command_composes(command, monkeypatch):
    try:
        _check(command, monkeypatch)
    except SystemExit as error:  # argparse's error(): its message is on stderr
        pytest.fail(f"{command.where}: {command.text!r} exits with {error.code}")
    except REJECTIONS as error:  # Hydra's rejection of a key, an option or the syntax
        line = " ".join(str(error).split())
        pytest.fail(f"{command.where}: {command.text!r}: {type(error).__name__}: {line[:400]}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.rejected],
                         ids=lambda c: f"{c.where} {c.text[:60]}")
def test_documented_mistake_is_rejected(command, monkeypatch):
    with pytest.raises(REJECTIONS):
        _check(command, monkeypatch)


# ---------------------------------------------------------------------------- a fake doc
def test_the_extractor_on_a_written_example(tmp_path):
    """Hand-written markdown: which lines become commands, with which arguments."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Run `python tools/eval.py split=train` or `make eval`.\n\n"
        "```bash\n"
        "python tools/train_net.py -m experiment=ce,focal \\\n"
        "    seed=0,1     # two seeds\n"
        "setsid python tools/predict.py input='a b/*.png' &\n"
        "torchrun --nproc_per_node=2 tools/train_net.py device=cpu\n"
        "python tools/train_net.py trian.x=1   # rejected: a typo\n"
        "bash tools/gpu_checks.sh\n"
        "```\n\n"
        "```python\n"
        "print('python tools/eval.py')\n"
        "```\n")
    found = [_command(f"doc.md:{n}", text) for n, text in _shell_snippets(doc)]
    found = [(c.where, c.tool, c.args, c.rejected) for c in found if c is not None]
    assert found == [
        ("doc.md:4", "train_net.py", ("-m", "experiment=ce,focal", "seed=0,1"), False),
        ("doc.md:6", "predict.py", ("input=a b/*.png",), False),
        ("doc.md:7", "train_net.py", ("device=cpu",), False),
        ("doc.md:8", "train_net.py", ("trian.x=1",), True),
        ("doc.md:1", "eval.py", ("split=train",), False),
    ]


def test_a_sweep_expands_into_its_jobs():
    jobs = _expand_sweeps(["experiment=ce,focal", "seed=0,1,2", "+a.b=1"], multirun=True)
    assert len(jobs) == 6
    assert jobs[0] == ["experiment=ce", "seed=0", "+a.b=1"]
    assert jobs[-1] == ["experiment=focal", "seed=2", "+a.b=1"]
    with pytest.raises(AssertionError, match="needs -m"):
        _expand_sweeps(["seed=0,1"], multirun=False)


def test_a_renamed_key_would_fail(monkeypatch):
    """The check is not vacuous: an unknown key and an unknown option are refused."""
    for args in (["schedule.iteration=5"], ["experiment=focall"], ["-m", "seed=0,1", "trian=1"]):
        with pytest.raises(REJECTIONS):
            _compose_all("train", args)
    for tool, args in (("bench_model.py", ["--batchsize", "2"]),
                       ("bench_export.py", ["--batch-size", "1"])):  # a prefix of --batch-sizes
        with pytest.raises(SystemExit):
            _parse_with_argparse(tool, args, monkeypatch)
    assert _parse_with_argparse("bench_export.py", ["--batch-sizes", "1", "8"],
                                monkeypatch).batch_sizes == [1, 8]


# ---------------------------------------------------------------------------- make targets
def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, flags=re.MULTILINE))


def test_documented_make_targets_exist():
    targets, missing = _make_targets(), []
    assert {"train", "test", "test-fast"} <= targets
    for path in DOCS:
        for number, text in _shell_snippets(path):
            for target in re.findall(r"(?:^|[;&|]\s*)make\s+([a-z][\w-]*)", text.strip()):
                if target not in targets:
                    missing.append(f"{path.relative_to(ROOT)}:{number}: make {target}")
    assert not missing, "\n".join(missing)


# ---------------------------------------------------------------------------- links
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for _, line, fence in _lines(path)
            if fence is None and re.match(r"#{1,6} ", line)}


def _links(path: Path) -> list[tuple[int, str]]:
    return [(number, target) for number, text in _prose(path)
            for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)]


def test_slugs_follow_github():
    assert _slug("Web demo: `tools/serve.py`, `make demo`") == "web-demo-toolsservepy-make-demo"
    assert _slug("What a checkpoint may contain") == "what-a-checkpoint-may-contain"


def test_relative_links_point_to_files_and_headings():
    broken = []
    for path in DOCS:
        for number, target in _links(path):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{where} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_links_are_found():
    assert ("docs/usage.md" in {t for _, t in _links(ROOT / "README.md")})
    assert any(t.endswith(".png") for _, t in _links(ROOT / "docs" / "studies.md"))


# ---------------------------------------------------------------------------- dataset docs
DATASETS_README = ROOT / "datasets" / "README.md"
DATASET_SCRIPTS = ROOT / "datasets"


def _yaml_blocks(path: Path) -> list[tuple[int, str]]:
    """(first line number, text) of each ```yaml block."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if current is None and stripped in ("```yaml", "```yml"):
            current = [number + 1, []]
        elif current is not None and stripped.startswith("```"):
            blocks.append((current[0], "\n".join(current[1])))
            current = None
        elif current is not None:
            current[1].append(line)
    return blocks


def _experiment_overrides(text: str) -> list[str]:
    """An experiment file's content as command-line overrides of train.yaml: its group choices
    (``override /<group>: <option>``) and every leaf value."""
    data = OmegaConf.create(text)
    overrides = []
    for entry in data.pop("defaults", []):
        for key, value in entry.items():
            overrides.append(f"{key.removeprefix('override ').lstrip('/')}={value}")

    def leaves(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                shown = "null" if value is None else value
                yield f"{prefix}{key}={shown}"

    return overrides + list(leaves(OmegaConf.to_container(data), ""))


def test_datasets_readme_yaml_uses_keys_the_config_has():
    """Each YAML snippet of datasets/README.md is an experiment file: its keys exist in the
    composed training config (``train_dataset:`` / ``val_dataset:`` existed nowhere)."""
    blocks = _yaml_blocks(DATASETS_README)
    assert blocks, "datasets/README.md shows no YAML"
    for number, text in blocks:
        assert text.startswith("# @package _global_"), f"datasets/README.md:{number}"
        overrides = _experiment_overrides(text)
        assert any(o.startswith("dataset=") for o in overrides), overrides
        try:
            _compose_all("train", overrides)
        except REJECTIONS as error:
            pytest.fail(f"datasets/README.md:{number}: {' '.join(str(error).split())[:400]}")


def test_the_yaml_check_would_fail_on_an_unknown_key():
    text = "# @package _global_\ndefaults:\n  - override /dataset: voc\ntrain_dataset:\n  root: x\n"
    assert _experiment_overrides(text) == ["dataset=voc", "train_dataset.root=x"]
    with pytest.raises(REJECTIONS):
        _compose_all("train", _experiment_overrides(text))


def _dataset_keys() -> set[str]:
    keys = set()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for option in ("shapes", "coco", "voc"):
            keys |= set(compose(config_name="train", overrides=[f"dataset={option}"]).dataset)
    return keys


def test_dataset_keys_the_dataset_docs_name_exist():
    """Every ``dataset.<key>`` that datasets/README.md and docs/configs.md name is a key of one
    of the dataset configs (``dataset.{train,val}_x`` spells two)."""
    keys, unknown = _dataset_keys(), []
    for path in (DATASETS_README, ROOT / "docs" / "configs.md"):
        text = path.read_text()
        named = set(re.findall(r"\bdataset\.(\w+)", text))
        named |= {f"{side}_{suffix}" for suffix in re.findall(r"\bdataset\.\{train,val\}_(\w+)",
                                                               text) for side in ("train", "val")}
        unknown += [f"{path.relative_to(ROOT)}: dataset.{key}" for key in sorted(named - keys)]
    assert {"train_ann_file", "val_image_dir", "train_split_file"} <= keys
    assert not unknown, "\n".join(unknown)


def _dataset_script_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, arguments) of every ``python datasets/<x>.py ...`` line in the docs."""
    found = []
    for path in DOCS:
        for number, text in _shell_snippets(path):
            try:
                words = shlex.split(text, comments=True)
            except ValueError:
                continue
            for i, word in enumerate(words[1:], start=1):
                match = re.fullmatch(r"(?:\./)?datasets/(\w+\.py)", word)
                if match and re.fullmatch(r"python3?", words[i - 1]):
                    found.append((f"{path.relative_to(ROOT)}:{number}", match.group(1),
                                  words[i + 1:]))
    return found


DATASET_COMMANDS = _dataset_script_commands()


def test_the_dataset_scripts_commands_are_found():
    assert {script for _, script, _ in DATASET_COMMANDS} == {"voc_to_coco.py"}
    assert sum(where.startswith("datasets/README.md") for where, _, _ in DATASET_COMMANDS) >= 2


@pytest.mark.parametrize(("where", "script", "args"), DATASET_COMMANDS,
                         ids=lambda value: value if isinstance(value, str) else None)
def test_documented_dataset_command_runs(where, script, args, tmp_path, monkeypatch, capsys):
    """Parsed as the script parses it; run from the repository root (``--out`` into a temporary
    folder) where the data it names is there (../shared/data), so a relative root works as
    written. Its printed ``dataset=coco`` overrides compose."""
    from helpers.load_file import load_file

    module = load_file(DATASET_SCRIPTS / script, script.removesuffix(".py"))
    parsed = module.parse_args(args)
    monkeypatch.chdir(ROOT)
    if not parsed.root.is_dir():
        pytest.skip(f"{where}: {parsed.root} is absent here (the command parses)")
    out = args.index("--out") + 1
    args = [*args[:out], str(tmp_path / Path(args[out]).name), *args[out + 1:]]
    assert module.main(args) == 0, f"{where}: {capsys.readouterr().err}"
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.startswith("read it with: dataset=coco ")
    _compose_all("eval", shlex.split(printed.removeprefix("read it with: ")))


def test_every_experiment_is_listed_in_configs_md():
    files = {path.stem for path in (ROOT / "configs" / "experiment").glob("*.yaml")}
    (row,) = [line for line in (ROOT / "docs" / "configs.md").read_text().splitlines()
              if line.startswith("| `experiment` |")]
    listed = set(re.findall(r"`(\w+)`", row.split("|")[2]))
    assert files - listed == set(), f"docs/configs.md does not list {sorted(files - listed)}"
    assert listed - files == set(), f"docs/configs.md lists missing {sorted(listed - files)}"
