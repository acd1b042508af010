"""``python -m alto_bus ...`` is the ``alto`` command."""

from alto_bus.deploy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
