"""Subcommands of `saelab`: each module here has `register(subparsers)` and adds its own commands.

To add a command group, write a module with `register` and list it in COMMAND_MODULES."""

COMMAND_MODULES = [
    "saelab.commands.train",
    "saelab.commands.interop",
    "saelab.commands.interpret",
    "saelab.commands.view",
    "saelab.commands.study",
]
