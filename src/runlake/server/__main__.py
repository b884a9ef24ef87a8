"""``python -m runlake.server``: the same as ``runlake serve``."""

import typer

from .command import serve_command

typer.run(serve_command)
