"""The `bertprep` command line: a thin shell that turns flags into a config and calls the library.

A `BertprepError` becomes one line on stderr and exit code 2; anything else is a bug and keeps its
traceback. This module imports neither torch nor the heavy preprocessing code at start-up, so
`bertprep --help` is instant.
"""

from __future__ import annotations

import sys

import click

from bertprep.shards.errors import BertprepError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bertprep")
def cli() -> None:
    """Prepare BERT pretraining data: tokenize a corpus, cut it into pre-masked shards, inspect
    and verify them. Train with `torchrun trainer/run.py --shards shards/train_*`."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the click group, mapping our errors to one line and exit 2."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except BertprepError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # bad flags: click's own message, but our exit code
        e.show()
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
