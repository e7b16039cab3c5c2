"""``python -m aeanomaly.cli``: the ``aeanomaly`` command."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="aeanomaly")
