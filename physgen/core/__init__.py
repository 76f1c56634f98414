"""The contract every plugin imports: the :class:`~physgen.core.process.Process` and its views,
option dataclass handling, EDM preconditioning and explicit random generators.

Nothing here names a process; see ``docs/architecture.md`` for how the folders fit together.
"""
