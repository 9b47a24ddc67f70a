#!/usr/bin/python3
"""Runs a command with a private PostgreSQL server up (initdb in a temp directory, a free
loopback port, an unprivileged user), its URL with the password in SLUICE_TEST_POSTGRES, and
stops the server afterwards; exits with the command's status.

    scripts/with-postgres.py swift test --skip-build
"""
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "integration"))
from pgserver import PostgresServer  # noqa: E402


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    server = PostgresServer().start()
    try:
        env = dict(os.environ, SLUICE_TEST_POSTGRES=server.url_with_password())
        return subprocess.call(sys.argv[1:], env=env)
    finally:
        server.destroy()


if __name__ == "__main__":
    sys.exit(main())
