"""Packs a grid's runs into populations: runs of one program, trained in one process.

Runs share a program when their configs differ only in
`config_lib.member_fields` (camri/population.py checks it again) and their
newest checkpoints are at the same step, so that they resume together. Each
such group is cut into populations of at most K members, of sizes as even as
K allows; a population of one is the run alone, with its own command. A
population's POPULATION.json and launch.log live in RUNS_DIR/_populations/<name>/.
"""

import hashlib
import json
import os
import sys

from camri import checkpoint
from camri import population

POPULATIONS_DIR = "_populations"
SPEC_FILE = "population.json"


def program_key(run) -> str:
  """What must be equal for runs to share a program: their configs without the member
  fields, and their newest checkpoint's step."""
  config, workdir = population.parse_member(list(run.command[3:]))
  step = max(checkpoint.complete_steps(workdir), default=0)
  return json.dumps([population.program(config), step], sort_keys=True)


def _even_chunks(items, size):
  count = -(-len(items) // size)
  cuts = [len(items) * i // count for i in range(count + 1)]
  return [items[a:b] for a, b in zip(cuts, cuts[1:])]


def pack(runs, size: int, root: str, log=None):
  """The runs as `launch.grid.Run`s to execute: populations of at most `size` runs sharing a
  program (each a `python -m camri.population` command, its file written), and the runs
  that share a program with no other, as they are."""
  from launch import grid  # pylint: disable=g-import-not-at-top  (grid imports this module)
  log = log or sys.stderr
  groups = {}
  for run in runs:
    groups.setdefault(program_key(run), []).append(run)
  packed = []
  for group in groups.values():
    for chunk in _even_chunks(group, size):
      if len(chunk) == 1:
        packed.append(chunk[0])
        continue
      names = ",".join(run.name for run in chunk)
      name = f"population-{hashlib.sha1(names.encode()).hexdigest()[:10]}"
      workdir = os.path.join(os.path.dirname(chunk[0].workdir), POPULATIONS_DIR, name)
      os.makedirs(workdir, exist_ok=True)
      spec = os.path.join(workdir, SPEC_FILE)
      with open(spec, "w") as f:
        json.dump({"members": [list(run.command[3:]) for run in chunk]}, f, indent=1)
      packed.append(grid.Run(name, workdir, chunk[0].config, {},
                             (chunk[0].command[0], "-m", "camri.population", spec)))
  alone = sum(1 for run in packed if not run.name.startswith("population-"))
  print(f"{len(runs)} runs in {len(packed) - alone} populations of at most {size} "
        f"and {alone} alone", file=log)
  return packed
