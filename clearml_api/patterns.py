"""ClearML's name patterns, matched in linear time by RE2.

ClearML filters queues, workers and tasks by a regular expression the caller sends. With
Python's backtracking `re`, `^(a+)+$` against a 29-character name took 18 s and held a
server process; RE2 matches in time linear in the name and refuses what it cannot do that
way (backreferences, lookaround) as a 400. Its memory for one pattern is capped too.
"""

from __future__ import annotations

from collections.abc import Callable

import re2

from clearml_api.transport import ApiFailure

MAX_PATTERN = 1000
_MAX_MEM = 8 * 1024 * 1024


def name_matcher(pattern: object, *, field: str, ignore_case: bool) -> Callable[[str], bool]:
    """A search function for `pattern`, or a ClearML 400 naming `field` when it is not a usable pattern."""
    if not isinstance(pattern, str):
        raise ApiFailure(400, 12, f"Validation error ({field} must be a string pattern)")
    if len(pattern) > MAX_PATTERN:
        raise ApiFailure(400, 12, f"Validation error ({field}: at most {MAX_PATTERN} characters)")
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    options.max_mem = _MAX_MEM
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ApiFailure(400, 12, f"Validation error ({field} is not a valid pattern: {reason})") from None
    return lambda text: compiled.search(text) is not None
