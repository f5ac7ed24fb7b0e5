"""``handnerf batch``: many avatars from one plan, each entry prepare -> fit -> eval -> render.

* :mod:`handnerf.batch.plan`: the plan file (YAML), checked and expanded before anything
  runs (every entry's root, capture, sequences and config).
* :mod:`handnerf.batch.stages`: one stage of one entry as a library call, its folder layout
  and the completion markers that make a re-run do only what is missing.
* :mod:`handnerf.batch.runner`: the stages as Ray tasks (resource requests, retries), one
  progress bar for the whole plan.
* :mod:`handnerf.batch.summary`: ``summary.json`` and ``summary.html``, a row per entry.

Ray is an optional dependency (``pip install 'handnerf[ray]'``); only the runner imports it.
"""
