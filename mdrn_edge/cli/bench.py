"""placeholder until its issue lands"""
import click


@click.command("bench")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
