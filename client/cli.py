"""The `oneiro` command: `submit`, `status`, `list`, ... call the API (client.commands); `render`
dreams on a local file with the engine alone (client.render); `keys` makes API keys
(client.keys)."""

from __future__ import annotations

import click

from client.commands import COMMANDS
from client.keys import keys
from client.render import recipe, render


@click.group()
@click.option(
    "--url",
    metavar="URL",
    help="The API, for any command after it (as that command's own --url).",
)
@click.option(
    "--key", metavar="KEY", help="API key, for any command after it (as that command's own --key)."
)
def main(url: str | None, key: str | None) -> None:
    """Oneiro: asynchronous DeepDream rendering."""
    # Kept as the group's params, which `connection` reads where a command's own are not given.


for command in [render, recipe, keys, *COMMANDS]:
    main.add_command(command)

if __name__ == "__main__":
    main()
