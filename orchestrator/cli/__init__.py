"""The ``ttc`` command, a package on top of every other layer (nothing below imports it).

``main.py`` is the only module that knows all subcommands; each subcommand module has a
``register(subparsers)`` that adds its parser and sets ``func`` (the command, ``args -> exit
code``); ``common.py`` declares the shared flags once. The console script is
``orchestrator.cli.main:main``; ``python -m orchestrator.cli`` runs the same.
"""
