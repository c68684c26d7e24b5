"""``vgkit recipes``: list the registered recipes, show one resolved with its parameter counts."""

from __future__ import annotations

import typer
import yaml
from rich.syntax import Syntax
from rich.table import Table

from vgkit.cli.common import console, user_errors

app = typer.Typer(help="List and show recipes.", invoke_without_command=True)


@app.callback()
@user_errors
def recipes(ctx: typer.Context) -> None:
    """List the registered recipes (``vgkit recipes show NAME`` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from vgkit.plugins import get_registry

    table = Table(title="recipes")
    for col in ("name", "plugin", "description"):
        table.add_column(col)
    registry = get_registry()
    for comp in registry.components("recipe"):
        data = registry.build("recipe", comp.name)
        table.add_row(comp.name, comp.plugin, str(data.get("description", "")))
    console.print(table)


@app.command("show")
@user_errors
def recipes_show(
    name: str = typer.Argument(..., help="A recipe name or a TOML/YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a value: key=value (repeatable)."),
) -> None:
    """Print a recipe with every option resolved, and the model's parameter count."""
    from vgkit.model import describe_recipe_model, parameter_counts
    from vgkit.plugins import get_registry
    from vgkit.recipe import load_recipe

    registry = get_registry()
    recipe = load_recipe(name, set_, registry=registry)
    # never folded: yaml would break long strings at 80 columns
    text = yaml.safe_dump(recipe.resolved(registry), sort_keys=False, width=float("inf"))
    if console.is_terminal:
        console.print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    else:  # a pipe or a file gets the YAML itself: never folded, cropped or padded
        console.print(text, end="", soft_wrap=True)
    model = describe_recipe_model(recipe, registry)
    table = Table(title=f"parameters of {recipe.name}")
    for col in ("component", "trainable", "frozen"):
        table.add_column(col)
    (table.columns[1].justify, table.columns[2].justify) = ("right", "right")
    for label, t, f in parameter_counts(model):
        table.add_row(label, f"{t:,}", f"{f:,}", style="bold" if label == "total" else None)
    console.print(table)
    vocab = len(model.text_encoder.vocab) if hasattr(model.text_encoder, "vocab") else None
    if vocab:
        console.print(f"(text encoder counted with a vocabulary of {vocab:,} tokens)")
