"""Sub-commands of ``dictation``: one module each, with ``register(subparsers)``."""
