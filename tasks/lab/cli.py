"""`scripts/lab up|status|down|images`: the lab's command line."""

from __future__ import annotations

import argparse
import json
import sys

from tasks.lab import images as lab_images
from tasks.lab.compose_stack import ComposeStack
from tasks.lab.engine import ensure_engine
from tasks.lab.layout import COMPOSE_FILE_NAME
from tasks.lab.stack import SCENARIOS, Lab, Stack

STYLES = ("docker", "compose")


def lab_style(lab: Lab) -> str | None:
    """The style a lab was brought up in, from its state file (or its compose file when `up`
    stopped before writing the state); None when there is no such lab."""
    if lab.state_file.exists():
        return json.loads(lab.state_file.read_text()).get("style", "docker")
    if (lab.folder / COMPOSE_FILE_NAME).exists():
        return "compose"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lab", description="The offline quant-stack lab.")
    parser.add_argument("--prefix", default="quant", help="name prefix of every lab resource")
    parser.add_argument(
        "--port-base",
        type=int,
        default=15500,
        help="first 127.0.0.1 port (mlflow +0, postgres +1, redis +2, s3 +3, backend +4)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the stack up, or converge it to a scenario")
    up.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    up.add_argument(
        "--style",
        choices=STYLES,
        default=None,
        help="docker: containers made with the Docker API (the default for a new lab); compose: made "
        "by the host's compose tool from a compose file as users write it. Default: the lab's own style",
    )
    up.add_argument(
        "--images",
        choices=("local", "official"),
        default="local",
        help="local: built here from recipes (offline); official: public registry images",
    )
    sub.add_parser("status", help="one line a service: state, health, memory, restarts, OOM")
    sub.add_parser("down", help="remove this prefix's containers, network, volume and lab folder")
    sub.add_parser("images", help="build the lab images that are missing, reuse the rest")
    args = parser.parse_args(argv)

    client = ensure_engine()
    if args.command == "images":
        lab_images.ensure_images(client)
        return 0
    if getattr(args, "images", "local") == "official":
        print(
            "lab: --images official needs a registry; it is not supported by this lab build yet "
            "(see README: 'Official images').",
            file=sys.stderr,
        )
        return 2
    lab = Lab(prefix=args.prefix, port_base=args.port_base)
    style = lab_style(lab)
    if args.command == "up" and args.style:
        if style and style != args.style:
            print(
                f"lab: {lab.prefix} is up in the {style} style; `scripts/lab --prefix {lab.prefix} down` first",
                file=sys.stderr,
            )
            return 2
        style = args.style
    stack = ComposeStack(lab, client) if style == "compose" else Stack(lab, client)
    if args.command == "up":
        stack.up(args.scenario)
        print(stack.status_table())
    elif args.command == "status":
        print(stack.status_table())
    elif args.command == "down":
        stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
