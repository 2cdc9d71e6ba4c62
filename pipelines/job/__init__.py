"""The main job: ``ranker run PIPELINE.yaml`` runs every step from raw data to a promoted model and batch scores.

Steps, in order (``tower``, ``compress`` and ``score`` only when the pipeline config names them)::

    data -> features -> tower -> train -> evaluate -> compress -> register -> promote -> score

Each step writes one folder under ``work_dir`` (data and features may live elsewhere, e.g. ``data/``) with a
``manifest.json``: its config, a fingerprint of its inputs and what it produced. A step whose fingerprint is
unchanged is skipped; the steps that have their own skip logic (data, features, evaluate, compress, score) keep it.
A job interrupted by a crash or Ctrl-C keeps its finished steps, and training continues from its newest intact
checkpoint (``ranker train --resume``). ``register`` records the registry version of every export keyed by the
export's content digest, so re-running it never creates a new version of an unchanged model.

The promotion decision is between two models: ``register`` registers the trained export, then the compressed one;
``promote`` runs the gate on each in that order. The trained model becomes the champion (on a first run: "first
promotion, no champion yet"; later, gated against the champion of earlier runs), then the compressed model is the
challenger, judged against it on the frozen holdout: the compression is shipped only if it costs no more quality
than the gate allows. See docs/pipeline.md.

Everything is checked before the first step runs: the pipeline config (unknown keys are errors naming the file and
the key) and every config it references (training, compression, gate). Each step's output goes to
``work_dir/logs/<step>.log``; the terminal shows one line per step and a summary at the end (also written to
``work_dir/summary.json``).

Modules: ``config`` (the pipeline config and its checks, ``load_job``), ``runners`` (one function per step),
``run`` (running the steps with their output in logs) and ``summary`` (what the job produced).
"""

STEPS = ("data", "features", "tower", "train", "evaluate", "compress", "register", "promote", "score")
OPTIONAL = ("tower", "compress", "score")  # run only when the pipeline config names them
