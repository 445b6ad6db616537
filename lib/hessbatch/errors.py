"""The one error type users see (a bad name, value, file or data root), and the one warning."""


class HessbatchError(ValueError):
    """Bad input, reported as one line before any compute starts."""


class NotInStore(HessbatchError):
    """A read-only store was asked for a result it does not hold."""


class HessbatchWarning(UserWarning):
    """A warning of ours (the command line shows it as one ``hessbatch: warning:`` line)."""


class NotConvergedWarning(HessbatchWarning):
    """Some wanted eigenpairs did not reach the tolerance within the iteration cap."""


class ResumeWarning(HessbatchWarning):
    """An interrupted run's checkpoint could not be read: the run starts over."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise HessbatchError(message)


def choose(kind: str, name: str, known) -> str:
    """Return `name` if it is one of `known`, else raise a one-line error listing them."""
    known = list(known)
    if name not in known:
        raise HessbatchError(f"unknown {kind} {name!r}; choose one of: {', '.join(map(str, known))}")
    return name


def check_options(fn, given, what: str, own=(), spell=None, values: bool = False) -> None:
    """One clear error for options ``fn`` does not take as keywords with defaults (``own``:
    extra names the caller handles; ``spell``: how the caller's user writes an option, e.g. as a
    command-line flag). With ``values``, each value is checked against its default's kind too
    (:func:`check_option_value`), for functions whose options are all counts, sizes or tolerances."""
    import inspect

    params = inspect.signature(fn).parameters
    known = {n for n, p in params.items() if p.default is not inspect.Parameter.empty and n != "progress"} | set(own)
    unknown = sorted(set(given) - known)
    if unknown and spell is not None:
        raise HessbatchError(f"{what} takes no option {spell(unknown[0])}")
    check(not unknown, f"{what} has no option(s) {', '.join(unknown)}; it takes: {', '.join(sorted(known)) or 'none'}")
    for name, value in given.items() if values else ():
        if name in params:
            check_option_value(f"{what}: {spell(name) if spell else name}", value, params[name].default)


def check_option_value(what: str, value, default) -> None:
    """An option's value against its default's kind: a count (an int default) is an integer ≥ 1, a
    size or tolerance (a float default, or None standing for a computed one) a finite number ≥ 0
    (> 0 where the default is None); booleans are neither."""
    import math

    if isinstance(default, bool) or isinstance(default, str):
        return
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        check(is_num and isinstance(value, int) and value >= 1, f"{what} must be an integer >= 1, got {value!r}")
    elif isinstance(default, float):
        check(is_num and math.isfinite(value) and value >= 0, f"{what} must be a finite number >= 0, got {value!r}")
    elif default is None and value is not None:
        check(is_num and math.isfinite(value) and value > 0, f"{what} must be a finite number > 0, got {value!r}")


def describe(e: BaseException) -> str:
    """An error in one line, for tables and logs: its type and its message's first line."""
    first = str(e).splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
