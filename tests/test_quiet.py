"""TensorFlow's import notices are dropped from stderr; everything else written there stays."""

from __future__ import annotations

import os
import subprocess
import sys

from catdog.quiet import filtered_stderr


def test_only_the_known_notices_are_dropped(capfd):
    """Lines written straight to descriptor 2 come back unless they are a known notice."""
    with filtered_stderr():
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see...\n")
        os.write(2, b"E0000 cuda_dnn.cc] Unable to register cuDNN factory\n")
        print("a Python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert "oneDNN" not in err
    assert "Unable to register cuDNN factory" in err and "a Python warning" in err


def test_importing_tensorflow_after_the_hook_prints_no_notices():
    """In a fresh process, the hook makes `import tensorflow` silent yet still working."""
    code = (
        "from catdog.quiet import quiet_tensorflow_import\n"
        "quiet_tensorflow_import()\n"
        "import tensorflow as tf\n"
        "print(int(tf.constant(2) * 21))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "42"
    assert "oneDNN" not in out.stderr and "absl::InitializeLog" not in out.stderr, out.stderr
