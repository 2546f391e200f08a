"""`python -m comfy_bridge.provision ...`: the provision command without the worker's CLI.

The Dockerfile runs it before the worker's own code is copied in, so editing the worker
does not invalidate the (large) ComfyUI and custom-node layers."""

import argparse
import sys

from comfy_bridge.provision import cli

parser = argparse.ArgumentParser(prog="python -m comfy_bridge.provision", description=cli.__doc__.split("\n\n")[0])
cli.add_arguments(parser)
sys.exit(cli.run(parser.parse_args()))
