"""`python -m camri.main` on a machine without internet: no host name resolves.

    python tests/offline_main.py <camri.main flags>
"""

import socket

from absl import app

from camri import main


def _unresolvable(host, *args, **kwargs):
  raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known: {host}")


if __name__ == "__main__":
  socket.getaddrinfo = _unresolvable
  app.run(main.main, flags_parser=main._parse_flags)  # pylint: disable=protected-access
