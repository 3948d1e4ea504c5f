#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys

from django.core.management import execute_from_command_line

from core.env import SettingError


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.settings")
    try:
        execute_from_command_line(sys.argv)
    except SettingError as e:  # a setting that cannot be used: say which and how to fix it, no traceback
        sys.stderr.write(f"muster: {e}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
