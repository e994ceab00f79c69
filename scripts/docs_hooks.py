"""MkDocs hooks (mkdocs.yml `hooks:`): the pages that must not drift from the code are generated
at build time. `<!-- generated: cli -->` becomes the CLI reference, read from the parser
`ctrain` itself uses; `<!-- generated: strategies -->` the strategy table, read from the
registry (parameters with their defaults, limits and help; declared capabilities)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    if "<!-- generated: strategies -->" in markdown:
        markdown = markdown.replace("<!-- generated: strategies -->", strategy_reference())
    return markdown


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, `<placeholders>` shown, not read as HTML."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def cli_reference() -> str:
    """Every command of `ctrain`, in `--help`'s order: what it does, its usage, its options."""
    from continual_trainer.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, command in sub.choices.items():
        out += [f"## ctrain {name}", "", command.description or "", ""]
        usage = command.format_usage().removeprefix("usage: ").strip()
        out += ["```", " ".join(usage.split()), "```", "", "| option | default | what it does |", "| --- | --- | --- |"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
            if action.option_strings and action.nargs != 0:
                flags += f" {action.metavar or action.dest.upper()}"
            if action.choices and not isinstance(action.choices, dict):
                flags += " (" + " \\| ".join(map(str, action.choices)) + ")"
            default = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"
            required = " (required)" if action.required and action.option_strings else ""
            out.append(f"| {flags}{required} | {default} | {_cell(action.help or '')} |")
        out.append("")
    return "\n".join(out)


def strategy_reference() -> str:
    """Every registered strategy: its summary and capabilities, then its parameters."""
    from continual_trainer import strategies
    from continual_trainer.trainer.params import constraint_of, doc_of

    out = ["| strategy | what it does | trains | new classes | `--actors` | in pieces | starts from |",
           "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name in strategies.names():
        s = strategies.get(name)
        can = s.can
        out.append(
            f"| `{name}` | {_cell(s.summary)} | {'yes' if can.trains else 'no'} | "
            f"{'yes' if can.learns_new_classes else 'no'} | {can.data_parallel or 'no'} | "
            f"{'yes' if can.in_pieces else 'no'} | {can.starts_from} |"
        )
    out.append("")
    for name in strategies.names():
        s = strategies.get(name)
        out += [f"### `{name}`", "", s.summary, ""]
        fields = dataclasses.fields(s.params)
        if not fields:
            out += ["No parameters.", ""]
            continue
        out += ["| parameter | default | allowed | what it does |", "| --- | --- | --- | --- |"]
        for f in fields:
            constraint = constraint_of(s.params, f.name)
            allowed = constraint.describe() if constraint is not None else ""
            out.append(f"| `{f.name}` | `{f.default}` | {_cell(allowed)} | {_cell(doc_of(s.params, f.name))} |")
        out.append("")
    return "\n".join(out)
