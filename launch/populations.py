"""Packs a grid's runs into populations: runs of one program, trained in one process.

Runs share a program when their configs differ only in
`config_fields.member_fields` (camri/population.py checks it again) and their
newest checkpoints are at the same step, so that they resume together. Each
such group is cut into populations of at most K members, of sizes as even as
K allows. With a bound on the processes (the local executor's parallel slots),
the populations, those of one run too, are dealt out to that many processes
(`deal`), each training its share one after the other: a process start and
TensorFlow's import cost more than a digits run. Without (Slurm), each
population is a process, and a population of one is the run alone, with its
own command.
A process's POPULATION.json and launch.log live in
<runs>/_populations/<name>/.
"""

import hashlib
import json
import os
import sys

from camri import checkpoint
from camri import population

# The launchers' default K: of the Ks measured, the one whose study finished soonest
# (README, "Many runs at once").
DEFAULT_SIZE = 16
POPULATIONS_DIR = "_populations"
SPEC_FILE = "population.json"
# JAX's persistent compilation cache of a study's processes: populations of one
# program (CAMRI's and ArcFace's, or one loss's at each stage) compile it once.
CACHE_DIR = "jax_cache"


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


def pack(runs, size: int, log=None, processes: int | None = None):
  """The runs as `launch.grid.Run`s to execute: populations of at most `size` runs sharing a
  program, in at most `processes` `python -m camri.population` commands (None: one each).

  With `processes`, a run that shares its program with no other is a population of one
  in one of those commands, which spares it a process start; without, or where it would
  be a command's only run, it keeps its own command (its files are written).
  """
  log = log or sys.stderr
  groups = {}
  for run in runs:
    groups.setdefault(program_key(run), []).append(run)
  chunks = [chunk for group in groups.values() for chunk in _even_chunks(group, size)]
  chunks.sort(key=len, reverse=True)
  if processes is None:
    shares = [[chunk] for chunk in chunks]
  else:
    shares = deal(chunks, processes)
    chunks = [chunk for share in shares for chunk in share]
  packed = [_process(share) if sum(map(len, share)) > 1 else share[0][0] for share in shares]
  singles = sum(len(chunk) == 1 for chunk in chunks)
  print(f"{len(runs)} runs, {len(chunks)} populations of at most {size} ({singles} of one run), "
        f"in {len(packed)} processes", file=log)
  return packed


def deal(chunks, processes: int):
  """`chunks` (populations) dealt out to at most `processes` shares of at most
  ceil(runs / processes) runs each, so that the processes, each training its share
  one after the other, end together where the runs allow.

  The largest first, each to the share with the fewest runs; a population that
  would take that share past the bound is cut there, and its rest dealt on
  (15 runs of 5 programs in 2 processes: 8 and 7 runs, not 9 and 6). The cut
  costs a program of another size: on a CPU a member trains at about the same
  speed in a population of 2 as of 3, so the study ends sooner.
  """
  runs = sum(map(len, chunks))
  bound = -(-runs // processes)
  shares = [[] for _ in range(min(processes, runs))]
  load = lambda share: sum(map(len, share))
  todo = sorted(chunks, key=len, reverse=True)
  while todo:
    chunk = todo.pop(0)
    share = min(shares, key=load)
    room = bound - load(share)  # At least 1: the least loaded share is below the bound.
    share.append(chunk[:room])
    if chunk[room:]:
      todo = sorted([*todo, chunk[room:]], key=len, reverse=True)
  return shares


def _process(chunks):
  """A `launch.grid.Run` of `python -m camri.population` for populations `chunks`."""
  from launch import grid  # pylint: disable=g-import-not-at-top  (grid imports this module)
  names = ",".join(run.name for chunk in chunks for run in chunk)
  name = f"population-{hashlib.sha1(names.encode()).hexdigest()[:10]}"
  first = chunks[0][0]
  workdir = os.path.join(os.path.dirname(first.workdir), POPULATIONS_DIR, name)
  os.makedirs(workdir, exist_ok=True)
  spec = os.path.join(workdir, SPEC_FILE)
  with open(spec, "w") as f:
    json.dump({"populations": [[list(run.command[3:]) for run in chunk] for chunk in chunks],
               "compilation_cache": os.path.join(os.path.dirname(workdir), CACHE_DIR)}, f,
              indent=1)
  return grid.Run(name, workdir, first.config, {}, (first.command[0], "-m", "camri.population",
                                                     spec))
