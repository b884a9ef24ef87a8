"""The lake-operation commands' former module, now ``runlake.cli.ops``; kept because importing it registers
``compact``, ``forward``, ``import`` and ``serve`` on ``runlake.cli.app``, as it always did."""

from .cli.ops import DEFAULT_MAX_STEP_MB, compact, forward, import_files

__all__ = ["DEFAULT_MAX_STEP_MB", "compact", "forward", "import_files"]
