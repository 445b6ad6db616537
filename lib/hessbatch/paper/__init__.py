"""The paper layer: the reproduction of Yao et al. (NeurIPS 2018) and the chapters on the two
related papers, built on the toolkit (``hessbatch``), which knows nothing of it.

- ``chapters``: one module per chapter, each with its parameters declared once (``Params``),
  the training runs it needs (``train_configs``) and what it shows (``compute``);
  ``registry`` names them for ``run_chapter`` and the planners.
- ``claims``, ``published``, ``figures``, ``presentation``: the paper's claims as checks, its
  published numbers, citable figures, tables in the paper's layout and provenance lines.
- ``profiles``, ``notebook``, ``book``, ``compute``, ``cli``: book profiles, the notebooks'
  runtime, the book build, computing a profile without notebooks (on a GPU), and the
  ``hessbatch`` command (the toolkit's commands plus ``book`` and ``compute``).
"""
