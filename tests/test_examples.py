"""The shipped scheduling examples are valid: the workflow YAML parses and the Python files compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = DOCS / "examples"


def test_github_actions_workflow_parses_and_takes_secrets() -> None:
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert triggers["schedule"][0]["cron"].count(" ") == 4
    steps = workflow["jobs"]["sync"]["steps"]
    sync = next(step for step in steps if "posthog-export sync" in step.get("run", ""))
    assert sync["env"]["POSTHOG_PERSONAL_API_KEY"] == "${{ secrets.POSTHOG_PERSONAL_API_KEY }}"
    assert all(value.startswith("${{ secrets.") for value in sync["env"].values())


@pytest.mark.parametrize("name", ["airflow_dag.py", "dagster_assets.py"])
def test_python_examples_compile(name: str) -> None:
    path = EXAMPLES / name
    compile(path.read_text(), str(path), "exec")


def test_recipes_link_every_example() -> None:
    recipes = (DOCS / "recipes.md").read_text()
    for example in EXAMPLES.iterdir():
        assert f"(examples/{example.name})" in recipes
    assert "```cron" in recipes
    assert "docs/recipes.md" in (DOCS.parent / "README.md").read_text()
