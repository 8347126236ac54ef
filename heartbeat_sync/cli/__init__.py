"""The ``heartbeat-sync`` command line: ``run``, ``register``, ``results`` and ``demo``.

Holds ``commands`` (:func:`main`: the commands), ``args`` (their options), ``config`` (pure:
options merged over the environment) and ``demo`` (the story played against ``FakePlatform``).

Offers :func:`main`, the console script. It is the top layer: it may import the public
surface, the other sub-packages' faces and :mod:`..testing` (the demo's platform); nothing
imports it but ``__main__`` and the console script.
"""

from __future__ import annotations

from .commands import main

__all__ = ["main"]
