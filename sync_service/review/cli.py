"""``mpd users``: reviewer accounts of the local review page (Cognito holds them on AWS)."""

from __future__ import annotations

import click


def _users():
    from sync_service.alerts.config import AlertSettings
    from sync_service.review.app import users_file

    try:
        return users_file(AlertSettings.from_env())
    except ValueError as error:
        raise click.UsageError(str(error)) from None


@click.group("users")
def users_group() -> None:
    """Reviewer accounts in $MPD_REVIEW_USERS (default $MPD_ALERT_DIR/users.json)."""


@users_group.command("add")
@click.argument("username")
@click.option("--site", "sites", multiple=True, required=True, help="A site this reviewer sees (repeat for more).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
def add_command(username: str, sites: tuple[str, ...], password_stdin: bool) -> None:
    """Add a reviewer (or replace their password and sites). The password is stored as an Argon2id hash."""
    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    users = _users()
    try:
        users.add(username, password, list(sites))
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"{username}: reviews {', '.join(sorted(set(sites)))} ({users.path})")


@users_group.command("list")
def list_command() -> None:
    """Reviewers and their sites."""
    for name, sites in sorted(_users().users().items()):
        click.echo(f"{name}\t{','.join(sites)}")


@users_group.command("remove")
@click.argument("username")
def remove_command(username: str) -> None:
    """Remove a reviewer (their open sessions end at their next request's site check)."""
    if not _users().remove(username):
        raise click.ClickException(f"no user {username!r}")
    click.echo(f"{username}: removed")
