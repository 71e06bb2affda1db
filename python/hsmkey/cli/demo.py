"""``hsmkey demo``: sign and verify JWTs with a throwaway SoftHSM2 token."""

from __future__ import annotations

import argparse

from ._common import Command


def register(command: Command) -> None:
    """Add the commands of this module to the parser."""
    p = command(
        "demo",
        "sign and verify JWTs with a throwaway SoftHSM2 token",
        "Create a throwaway SoftHSM2 token, sign a JWT with every algorithm, verify each "
        "in software. Needs SoftHSM2; ignores the token options.",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import main as demo_main

    return demo_main()
