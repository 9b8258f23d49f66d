"""The `oneiro` command: `submit`, `status`, `list`, ... call the API (client.commands); `render`
dreams on a local file with the engine alone (client.render); `keys` makes API keys
(client.keys)."""

from __future__ import annotations

import click

from client.commands import COMMANDS
from client.keys import keys
from client.render import recipe, render


@click.group()
def main() -> None:
    """Oneiro: asynchronous DeepDream rendering."""


for command in [render, recipe, keys, *COMMANDS]:
    main.add_command(command)

if __name__ == "__main__":
    main()
