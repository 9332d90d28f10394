"""Exactly-once from Python: a job started from Python with checkpoints, killed with kill -9 and
resumed from Python, writes the same rows as an uninterrupted run, with a stateful Python UDF
(its snapshot()/restore() state in the checkpoints) in the pipeline."""

import glob
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(HERE, "ckpt_job.py"), *args], cwd=os.getcwd(), **kw)


def _rows(path):
    t = pq.read_table(path)
    return sorted(zip(t["n"].to_pylist(), t["seen"].to_pylist(), t["n2"].to_pylist()))


def test_kill_9_and_resume_from_python_equals_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    p = _run([str(whole), str(tmp_path / "ck-whole"), "fresh", "0"])
    assert p.wait(timeout=120) == 0
    expected = _rows(whole)
    assert len(expected) == 20000

    out, store = tmp_path / "out", tmp_path / "ck"
    p = _run([str(out), str(store), "fresh", "5000"])
    deadline = time.time() + 60
    # Wait until a checkpoint completed and its output was published, then kill -9 mid-run.
    while not glob.glob(str(out / "*.parquet")):
        assert p.poll() is None, "the job ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len(_rows(out)) < 20000

    p = _run([str(out), str(store), "resume", "0"])
    assert p.wait(timeout=120) == 0
    assert _rows(out) == expected


def test_ctrl_c_stops_the_job_cleanly(tmp_path):
    out = tmp_path / "out"
    code = (
        # Should the job not stop, the child prints where it waits before the test gives up.
        "import faulthandler; faulthandler.dump_traceback_later(25)\n"
        # A child of a background job of a non-interactive shell (how CI may start the suite)
        # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: give
        # it the one a terminal or a notebook has.
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import weir\n"
        "df = weir.datagen([{'name': 'n', 'kind': 'sequence'}], batch_size=100, rows_per_second=2000)"
        f".write_parquet({str(out)!r})\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    df.run(progress=False)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped')\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # Ctrl-C once the job runs (not while Python still imports, however loaded the machine is).
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    try:
        stdout, stderr = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, stderr = p.communicate()
        raise AssertionError(f"the job did not stop within 30 s of Ctrl-C; its stacks:\n{stderr}")
    assert p.returncode == 0 and "stopped" in stdout, stderr
    # What was read was written: the published rows are 0..k without a gap.
    n = sorted(pq.read_table(out)["n"].to_pylist())
    assert n and n == list(range(len(n)))
