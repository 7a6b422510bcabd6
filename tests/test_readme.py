"""The README's promises: the plugin example works when pasted; CI runs the README's test command."""

import re
from pathlib import Path

from lmbench import plugins, registry

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = code_blocks("bash")[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_first_command_installs_and_runs_the_default_job():
    first = code_blocks("bash")[0]
    assert 'pip install -e ".[test]"' in first and "lmbench run --method baseline --K 10" in first


def test_plugin_example_works_when_pasted(tmp_path, monkeypatch, test_plugin):
    example = next(block for block in code_blocks("python") if "register_methods" in block)
    path = tmp_path / "my_plugin.py"
    path.write_text(example)
    monkeypatch.setenv("LMBENCH_PLUGINS", str(path))
    plugins.reset_plugin_manager()
    plugins.get_plugin_manager().register(__import__("plugin_fixtures").TestPlugin(), name="test-plugin")
    try:
        spec = registry.get_method("tiny_equivariance")
        assert spec.plugin == str(path)
        from lmbench.config import RunConfig
        from lmbench.runner import run

        config = RunConfig(method="tiny_equivariance", dataset="blobs", K=4, steps=3, batch_size=4, image_size=32)
        metrics = run(config, tmp_path / "run")
        assert metrics["steps"] == 3 and metrics["nme"] >= 0
    finally:
        plugins.reset_plugin_manager()
