"""What every command shares: the consoles, and turning a UserError into one line and exit code 2."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from robustmtl.errors import UserError
from robustmtl.params import field_types, parse_cli_value

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def settings_options(block: type, param: str, keys: tuple[str, ...] | None = None,
                     overrides: bool = False) -> Callable[[F], F]:
    """Give a command one option per field of the settings dataclass `block` (`keys`, else all of them):
    type and default from the field, `help` (and `cli_names`, where the name is not the field's) from its
    metadata, so each option is defined once, on the field. The command takes `param` (keyword-only, where
    the options are to appear in its --help): the values given, by field name.

    `overrides`: every default is None ("keep the grid file's"), and a bound in the field's metadata is
    checked as the option is parsed (and shown in --help); otherwise the command's own dataclass checks."""

    def decorate(command: F) -> F:
        hints = field_types(block)
        chosen = [f for f in dataclasses.fields(block) if keys is None or f.name in keys]
        generated = [_option(f, hints[f.name], overrides) for f in chosen]
        parameters: list[inspect.Parameter] = []
        for p in inspect.signature(command, eval_str=True).parameters.values():
            parameters += generated if p.name == param else [p]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in chosen}
            return command(**kwargs, **{param: values})

        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate


def _option(f: dataclasses.Field[Any], hint: Any, overrides: bool) -> inspect.Parameter:
    bounds = {}
    if overrides and "min" in f.metadata:
        bounds["min"] = f.metadata["min"]
    elif overrides and f.metadata.get("positive") and hint is int:
        bounds["min"] = 1
    option = typer.Option(*f.metadata.get("cli_names", ()), help=f.metadata["help"], **bounds)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None if overrides else f.default,
                             annotation=Annotated[hint | None if overrides else hint, option])


def option_for(command: Callable[..., Any], key: str, value: Any) -> str | None:
    """How `--set key=value` is written as `command`'s own option (`--device cpu`, `--no-compile`); None when
    `command` has no option of that name. Read from the command's signature, so every option it has (the
    generated execution options included) is covered without a list of keys."""
    parameter = inspect.signature(command).parameters.get(key)
    if parameter is None:
        return None
    annotation = parameter.annotation
    flag = "--" + key.replace("_", "-")
    if bool in (annotation, *typing.get_args(annotation)[:1]):
        return flag if value is True else f"--no-{key.replace('_', '-')}"
    return f"{flag} {value}"


class App(typer.Typer):
    """The Typer app, with click's usage errors (missing option, bad value, unknown option) as one red line
    and exit code 2 like every other user mistake, instead of a usage banner and a boxed message.

    Click's exceptions are recognised by their interface, not their class: Typer >= 0.20 ships its own
    copy of click, older Typer uses click itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            code = super().__call__(*args, **{**kwargs, "standalone_mode": False})
        except Exception as exc:
            sys.exit(_usage_error_exit(exc))
        sys.exit(code if isinstance(code, int) else 0)


def _usage_error_exit(exc: Exception) -> int:
    """Print a click usage error as one line and return its exit code; anything else is re-raised."""
    kind = type(exc).__name__
    if kind == "NoArgsIsHelpError":
        return 2  # Typer printed the help already
    if kind == "Abort":
        err_console.print("[bold red]error:[/] aborted", highlight=False)
        return 1
    message, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
    if not callable(message) or not isinstance(code, int):
        raise exc
    ctx = getattr(exc, "ctx", None)
    where, hint = (f"{ctx.command_path}: ", f" (see `{ctx.command_path} --help`)") if ctx else ("", "")
    err_console.print(f"[bold red]error:[/] {escape(where + message() + hint)}", highlight=False, soft_wrap=True)
    return code


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs as typed values (TOML syntax for the value)."""
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = parse_cli_value(text.strip())
    return values
