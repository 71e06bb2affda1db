"""``hsmkey tokens``: the slots and tokens of a module (no PIN needed)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import Command, init_args, module_path, print_json, short_flags, table


def register(command: Command) -> None:
    """Add the commands of this module to the parser."""
    p = command(
        "tokens",
        "list the slots and tokens of a module",
        "List the slots of the module with their tokens: label, serial, manufacturer, "
        "model, flags. --mechanisms adds the mechanisms of each token. Needs no PIN.",
    )
    p.add_argument("--mechanisms", action="store_true", help="list each token's mechanisms as well")
    p.set_defaults(func=cmd_tokens)


def _list_tokens(
    module: str, mechanisms: bool, init_args: str | None = None
) -> list[dict[str, Any]]:
    """Slots, tokens and mechanisms of a module (no session, no login)."""
    from .. import _hsmkey

    return list(_hsmkey.list_tokens(module, mechanisms=mechanisms, init_args=init_args))


def cmd_tokens(args: argparse.Namespace) -> int:
    module = module_path(args)
    slots = _list_tokens(module, mechanisms=args.mechanisms or args.json, init_args=init_args(args))
    # Only options given on the command line filter (HSM_TOKEN does not).
    if args.token is not None:
        slots = [s for s in slots if s.get("label") == args.token]
    if args.serial is not None:
        slots = [s for s in slots if s.get("serial") == args.serial]
    if args.slot is not None:
        slots = [s for s in slots if s.get("slot_id") == args.slot]
    if args.json:
        print_json(slots)
        return 0
    if not slots:
        print("no slots" if args.token is args.serial is args.slot is None else "no match")
        return 0
    rows = []
    for s in slots:
        if not s.get("token_present", True):
            rows.append([s["slot_id"], "(no token)", None, None, None, None])
            continue
        label = s.get("label")
        initialized = "CKF_TOKEN_INITIALIZED" in s.get("flags", ())
        rows.append(
            [
                s["slot_id"],
                label if initialized else "(not initialized)",
                s.get("serial") or None,
                s.get("manufacturer") or None,
                s.get("model") or None,
                short_flags(s.get("flags", ())),
            ]
        )
    print(table(("SLOT", "LABEL", "SERIAL", "MANUFACTURER", "MODEL", "FLAGS"), rows))
    if args.mechanisms:
        for s in slots:
            mechs = s.get("mechanisms") or []
            if not mechs:
                continue
            label = s.get("label") or "(not initialized)"
            print(f"\nslot {s['slot_id']} ({label}): {len(mechs)} mechanisms")
            print(
                table(
                    ("MECHANISM", "MIN", "MAX", "FLAGS"),
                    [
                        [
                            m["name"],
                            m.get("min_key_size"),
                            m.get("max_key_size"),
                            short_flags(m.get("flags", ())),
                        ]
                        for m in mechs
                    ],
                )
            )
    return 0
