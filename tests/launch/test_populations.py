"""How a study's populations are dealt out to the local executor's processes."""

from launch import populations


def _sizes(shares):
  return [[len(chunk) for chunk in share] for share in shares]


def test_the_processes_get_runs_within_one_of_each_other():
  # 5 programs of 3 seeds in 2 processes: dealt whole, the shares would be 9 and 6 runs.
  chunks = [[f"{loss}{seed}" for seed in range(3)] for loss in "abcde"]
  shares = populations.deal(chunks, 2)
  assert _sizes(shares) == [[3, 3, 2], [3, 3, 1]]
  assert sorted(run for share in shares for chunk in share for run in chunk) == sorted(
      run for chunk in chunks for run in chunk)
  assert shares[0][2] + shares[1][2] == ["e0", "e1", "e2"]  # The cut keeps the members' order.


def test_a_population_is_cut_only_where_a_share_would_pass_the_bound():
  assert _sizes(populations.deal([[1, 1], [2]], 2)) == [[2], [1]]
  assert _sizes(populations.deal([[1] * 16, [2] * 10], 2)) == [[13], [10, 3]]
  assert _sizes(populations.deal([[1, 1, 1, 1], [2, 2], [3, 3]], 3)) == [[3], [2, 1], [2]]
  assert _sizes(populations.deal([[1], [2]], 4)) == [[1], [1]]  # No empty process.
