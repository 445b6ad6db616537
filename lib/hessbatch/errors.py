"""The one error type users see: a bad name, value, file or data root."""


class HessbatchError(ValueError):
    """Bad input, reported as one line before any compute starts."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise HessbatchError(message)


def choose(kind: str, name: str, known) -> str:
    """Return `name` if it is one of `known`, else raise a one-line error listing them."""
    known = list(known)
    if name not in known:
        raise HessbatchError(f"unknown {kind} {name!r}; choose one of: {', '.join(map(str, known))}")
    return name
