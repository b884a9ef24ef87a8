"""``python -m runlake.cli``: the ``runlake`` command.

It runs the app of the imported package ``runlake.cli`` (this file is ``__main__``, not a second copy of the CLI),
so commands that other modules register on ``runlake.cli.app`` are part of it.
"""

from runlake.cli import main

if __name__ == "__main__":
    main()
