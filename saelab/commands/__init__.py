"""Subcommands of `saelab`, one module per stage (train, evaluate, study, interop, interpret, view); each
module has `register(subparsers)` and adds its own commands.

To add a command group, write a module with `register` and list it in COMMAND_MODULES."""

COMMAND_MODULES = [
    "saelab.commands.train",
    "saelab.commands.evaluate",
    "saelab.commands.study",
    "saelab.commands.interop",
    "saelab.commands.interpret",
    "saelab.commands.view",
]
