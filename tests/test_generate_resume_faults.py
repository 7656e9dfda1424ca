"""`pairforge generate` after faults: a killed run's temporary files are cleaned on resume, the
result equals an uninterrupted run, and --n never silently disagrees with the folder."""

import numpy as np
from test_generate_cli import FAST_FLAGS, invoke, save_run

from pairforge.data.dataset import load_dataset


def generate(run, out, n):
    # Batch size 1: a resumed batch then holds the same samples as the uninterrupted one, so
    # outputs are comparable bit for bit (batched convolutions differ by float round-off).
    args = ["--run", run, "--n", n, "--out", out, "--batch-size", 1, *FAST_FLAGS]
    result = invoke("--pipeline", "joint", *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_resume_after_a_kill_removes_temporary_files_and_matches(tmp_path):
    run = save_run(tmp_path / "joint", "joint")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    generate(run, straight, 3)
    generate(run, killed, 3)
    # What a SIGKILL while writing sample 2 leaves: its record not yet written, half files.
    (killed / ".generate" / "records" / "gen000002.json").unlink()
    strays = [
        killed / "images" / ".gen000002.tif.tmp4242",
        killed / "masks" / ".gen000002.png.tmp4242",
        killed / ".generate" / "records" / ".gen000002.json.tmp4242",
        killed / ".dataset.yaml.tmp4242",
    ]
    for stray in strays:
        stray.write_bytes(b"half a file")
    assert "3 pairs (1 new" in generate(run, killed, 3).output
    assert not [stray for stray in strays if stray.exists()]
    hidden = [p for p in killed.rglob(".*") if p.is_file() and ".tmp" in p.name]
    assert hidden == []
    a, b = load_dataset(straight), load_dataset(killed)
    assert a.ids() == b.ids() == ["gen000000", "gen000001", "gen000002"]
    for sample in a.ids():
        np.testing.assert_array_equal(a.read_image(sample), b.read_image(sample))
        np.testing.assert_array_equal(a.read_mask(sample), b.read_mask(sample))


def test_a_larger_n_extends_and_a_smaller_n_is_refused(tmp_path):
    run = save_run(tmp_path / "joint", "joint")
    out = tmp_path / "gen"
    generate(run, out, 2)
    assert "3 pairs (1 new" in generate(run, out, 3).output
    result = invoke("--pipeline", "joint", "--run", run, "--n", 2, "--out", out, *FAST_FLAGS)
    assert result.exit_code != 0  # was: "3 pairs (0 new)", exit 0
    assert "already holds 3 generated pairs" in str(result.exception)
    assert load_dataset(out).ids() == ["gen000000", "gen000001", "gen000002"]
